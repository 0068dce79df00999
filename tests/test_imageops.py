import torch

from stages.core.imageops import (
    augment_copies,
    normalize,
    pixel_bounds,
    random_cutout,
    random_resized_crop,
    random_shift_flip,
    smoothing_prior,
)


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


def test_augment_copies_layout_and_identity():
    x = torch.randn(3, 1, 6, 6)
    y = augment_copies(x, 4, torch.Generator().manual_seed(0))
    assert y.shape == (12, 1, 6, 6)
    assert all(torch.equal(y[k * 3 : (k + 1) * 3], x) for k in range(4))  # no augmentation: exact copies, copy-major


def test_crop_resize_and_cutout():
    x = torch.arange(64.0).view(1, 1, 8, 8).repeat(16, 1, 1, 1)
    gen = torch.Generator().manual_seed(0)
    full = random_resized_crop(x, 1.0, gen)
    assert torch.allclose(full, x, atol=1e-4)  # area 1: the identity resampling
    crops = random_resized_crop(x, 0.3, gen)
    assert crops.shape == x.shape and not torch.allclose(crops, x)
    holes = random_cutout(torch.ones(64, 2, 8, 8), 0.25, gen)
    zeros = (holes == 0).sum((1, 2, 3))
    assert (zeros > 0).all() and (zeros <= 2 * 4).all()  # one square of side 0.25 x 8 = 2 per image, both channels
    assert (zeros == 2 * 4).sum() >= 32  # unclipped where the centre is >= 1 px from the top/left border (49/64)
    for img in holes[:, 0]:  # the zeros form one axis-aligned rectangle: its bounding box holds nothing else
        r, c = (img == 0).nonzero(as_tuple=True)
        assert (img[r.min() : r.max() + 1, c.min() : c.max() + 1] == 0).all() and r.max() - r.min() < 2 and c.max() - c.min() < 2


def test_duplicates_gradient_is_mean_over_copies():
    """Averaging a per-sample loss over D augmented copies gives each image the mean of its copies' gradients."""
    torch.manual_seed(0)
    w = torch.randn(1, 6, 6)
    x = torch.randn(3, 1, 6, 6, requires_grad=True)
    kw = dict(max_shift=1, flip=True, crop_min_area=0.5, cutout=0.3)

    def per_sample_loss(xa):
        return (xa * w).sum((1, 2, 3)) ** 2

    xa = augment_copies(x, 4, torch.Generator().manual_seed(7), **kw)
    (grad_all,) = torch.autograd.grad(per_sample_loss(xa).mean(), x)
    per_copy = []
    for k in range(4):
        xa = augment_copies(x, 4, torch.Generator().manual_seed(7), **kw)
        (g,) = torch.autograd.grad(per_sample_loss(xa[k * 3 : (k + 1) * 3]).mean(), x)
        per_copy.append(g)
    assert torch.allclose(grad_all, torch.stack(per_copy).mean(0), atol=1e-5)
    # Without augmentation, D identical copies give exactly the single-copy gradient.
    (g1,) = torch.autograd.grad(per_sample_loss(augment_copies(x, 1, torch.Generator())).mean(), x)
    (g4,) = torch.autograd.grad(per_sample_loss(augment_copies(x, 4, torch.Generator())).mean(), x)
    assert torch.allclose(g1, g4, atol=1e-5)


def test_smoothing_prior_prefers_smooth_images():
    smooth = torch.linspace(0, 1, 8).view(1, 1, 1, 8).repeat(2, 1, 8, 1)
    assert float(smoothing_prior(smooth, 1.0)) < float(smoothing_prior(torch.randn(2, 1, 8, 8), 1.0))
