"""train_teacher.cutout: one zeroed square per training image, drawn after shift/flip from the same RNG, so that
cutout 0 keeps the augmentation stream (and the default teacher's weights) exactly as before."""

import torch
from torch import nn

from stages.core import training
from stages.core.imageops import random_shift_flip
from stages.core.params import section_with


class Recorder(nn.Module):
    """A linear classifier that keeps every input batch it sees in training."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 3)
        self.seen = []

    def forward(self, x):
        if self.training:
            self.seen.append(x.detach().clone())
        return self.fc(x.flatten(1))


def batches_seen(cutout, seed=5):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 1, 8, 8, generator=g) + 1.0, torch.randint(0, 3, (40,), generator=g)  # no pixel is 0
    cfg = section_with("train_teacher", epochs=1, batch_size=16, lr=0.01, max_shift=1, flip=True, cutout=cutout)
    model = Recorder()
    training.train_classifier(model, x, y, cfg, torch.device("cpu"), seed)
    return x, model.seen


def reference_batches(x, seed=5):
    """The shift/flip stream worked out independently of train_classifier: the epoch's permutation, then one draw per batch."""
    gen = torch.Generator().manual_seed(seed)
    order = list(training.minibatches(len(x), 16, gen))
    return [random_shift_flip(x[idx], 1, True, gen) for idx in order]


def test_cutout_zero_keeps_the_augmentation_stream():
    x, seen = batches_seen(0.0)
    ref = reference_batches(x)
    assert len(seen) == len(ref) == 3
    assert all(torch.equal(a, b) for a, b in zip(seen, ref))


def test_cutout_zeroes_one_square_per_image_of_the_first_batch():
    x, seen = batches_seen(0.5)  # side 0.5 x 8 = 4 px
    ref = reference_batches(x)[0]
    first = seen[0]
    assert not torch.equal(first, ref)
    hole = (first == 0) & (ref != 0)  # pixels cutout zeroed (a shift's zero fill is 0 in both)
    assert torch.equal(first[~hole], ref[~hole])  # everything else is the shifted/flipped image itself
    per_image = hole.flatten(1).sum(1)
    assert (per_image > 0).all() and (per_image <= 16).all()  # at most a 4 x 4 square, clipped at the border
