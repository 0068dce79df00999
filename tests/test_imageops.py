import torch

from stages.core.imageops import normalize, pixel_bounds, random_shift_flip


def test_no_augmentation_is_identity():
    x = torch.randn(5, 2, 6, 6)
    assert torch.equal(random_shift_flip(x, 0, False, torch.Generator().manual_seed(0)), x)


def test_shift_moves_content_and_fills_zero():
    x = torch.ones(64, 1, 6, 6)
    y = random_shift_flip(x, 2, False, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    assert set(torch.unique(y).tolist()) <= {0.0, 1.0}
    assert (y == 0).any() and (y.sum((1, 2, 3)) >= 16).all()  # at most 2 rows + 2 cols lost


def test_flip_and_determinism():
    x = torch.arange(36.0).view(1, 1, 6, 6).repeat(32, 1, 1, 1)
    a = random_shift_flip(x, 0, True, torch.Generator().manual_seed(3))
    b = random_shift_flip(x, 0, True, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    flipped = (a == x.flip(3)).all((1, 2, 3))
    same = (a == x).all((1, 2, 3))
    assert (flipped | same).all() and flipped.any() and same.any()


def test_gradient_reaches_input():
    x = torch.randn(4, 1, 6, 6, requires_grad=True)
    random_shift_flip(x, 1, True, torch.Generator().manual_seed(0)).sum().backward()
    assert x.grad.abs().sum() > 0


def test_normalize_and_bounds():
    u8 = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2)
    x = normalize(u8, [0.5], [0.25])
    lo, hi = pixel_bounds([0.5], [0.25])
    assert torch.allclose(x.flatten(), torch.tensor([float(lo), float(hi)]))
