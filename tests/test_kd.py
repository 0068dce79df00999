import copy
from types import SimpleNamespace

import pytest
import torch

from conftest import make_trained_toy_net
from stages.core.bn import batch_mean_var, running_stats
from stages.core.kd import FeatureTap, cutmix, cutmix_box, distill, iq_loss, kd_loss, mix_batch, mixup, recalibrate_bn
from stages.core.pruning import make_permanent, masks_of, prune_l1_unstructured
from stages.core.runtime import StageError


def cfg(**kw):
    base = dict(
        epochs=3,
        batch_size=16,
        lr=0.05,
        momentum=0.9,
        weight_decay=0.0,
        schedule="constant",
        temperature=3.0,
        freeze_bn=True,
        recalibrate_bn=False,
        max_shift=0,
        flip=False,
        iq_beta=0.0,
        iq_layers="bn1,bn2",
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
        adaptive_rounds=0,
        adaptive_images=1,
        adaptive_weight=0.0,
    )
    return SimpleNamespace(**(base | kw))


def test_kd_loss_zero_iff_equal():
    t = torch.randn(8, 5)
    assert abs(float(kd_loss(t.clone(), t, 3.0))) < 1e-6
    assert float(kd_loss(torch.randn(8, 5), t, 3.0)) > 0


def test_kd_loss_zero_for_identical_nets(trained_toy_net):
    x = torch.randn(8, 1, 8, 8)
    student = copy.deepcopy(trained_toy_net)
    with torch.no_grad():
        assert abs(float(kd_loss(student(x), trained_toy_net(x), 3.0))) < 1e-6


def test_distill_lowers_loss_and_keeps_masks(trained_toy_net):
    student = copy.deepcopy(trained_toy_net)
    prune_l1_unstructured(student, 0.6, "global")
    masks = masks_of(student)
    x = torch.randn(64, 1, 8, 8) * 2 + 1.5
    hist = distill(student, trained_toy_net, x, cfg(epochs=8, freeze_bn=False), torch.device("cpu"), seed=0)
    assert hist[-1]["kd_loss"] < hist[0]["kd_loss"]
    make_permanent(student)
    assert all(torch.all(getattr(student, k.split(".")[0]).weight[~m] == 0) for k, m in masks.items())


def test_freeze_bn_keeps_running_stats(trained_toy_net):
    student = copy.deepcopy(trained_toy_net)
    before = running_stats(student)
    distill(student, trained_toy_net, torch.randn(32, 1, 8, 8), cfg(freeze_bn=True), torch.device("cpu"), seed=0)
    after = running_stats(student)
    assert all(torch.equal(before[k][0], after[k][0]) and torch.equal(before[k][1], after[k][1]) for k in before)
    distill(student, trained_toy_net, torch.randn(32, 1, 8, 8), cfg(freeze_bn=False), torch.device("cpu"), seed=0)
    assert not torch.equal(before["bn1"][0], running_stats(student)["bn1"][0])


def test_recalibrate_bn_gives_exact_statistics(trained_toy_net):
    x = torch.randn(40, 1, 8, 8)
    recalibrate_bn(trained_toy_net, x, 8, torch.device("cpu"))
    mu, var = batch_mean_var(trained_toy_net.conv1(x))
    assert torch.allclose(trained_toy_net.bn1.running_mean, mu, atol=1e-5)
    # running_var is the mean of per-batch unbiased variances; close to the pooled variance.
    assert torch.allclose(trained_toy_net.bn1.running_var, var, rtol=0.1)
    assert not trained_toy_net.training


def test_divergence_stops_with_a_clear_error(trained_toy_net):
    student = copy.deepcopy(trained_toy_net)
    with pytest.raises(StageError, match=r"distill: non-finite loss .* in epoch \d+, batch \d+, step \d+: lower distill.lr"):
        distill(student, trained_toy_net, torch.randn(32, 1, 8, 8) * 2 + 1.5, cfg(lr=1e6, epochs=5), torch.device("cpu"), seed=0)


def test_iq_loss_zero_for_identical_nets_positive_otherwise(trained_toy_net):
    x = torch.randn(8, 1, 8, 8)
    twin, other = copy.deepcopy(trained_toy_net), copy.deepcopy(trained_toy_net)
    with torch.no_grad():
        other.conv2.weight.mul_(0.5)
    feats = {}
    for name, net in (("teacher", trained_toy_net), ("twin", twin), ("other", other)):
        with FeatureTap(net, ["conv1", "bn2"]) as tap, torch.no_grad():
            net(x)
        feats[name] = dict(tap.features)
    assert float(iq_loss(feats["twin"], feats["teacher"])) == 0.0
    assert float(iq_loss(feats["other"], feats["teacher"])) > 0


def test_feature_tap_rejects_unknown_layer(toy_net):
    with pytest.raises(StageError, match="distill.iq_layers"):
        FeatureTap(toy_net, ["layer9"])


def test_mixup_is_a_convex_combination_of_two_batch_images():
    x = torch.randn(16, 1, 4, 4)
    mixed, lam, perm = mixup(x, 0.4, torch.Generator().manual_seed(0))
    assert 0.0 <= lam <= 1.0 and sorted(perm.tolist()) == list(range(16))
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[perm])
    again, lam2, perm2 = mixup(x, 0.4, torch.Generator().manual_seed(0))
    assert lam2 == lam and torch.equal(perm2, perm) and torch.equal(again, mixed)


def test_cutmix_pastes_one_box_of_the_partner_image_into_every_image():
    """Image i is the constant i, so every pixel tells where it came from: image i keeps i outside one rectangle
    (the same for the batch) and holds perm[i] inside it, whose area is the returned 1 - kept share."""
    x = torch.arange(6.0).view(6, 1, 1, 1).expand(6, 2, 10, 12).contiguous()
    for seed in range(20):
        mixed, kept, perm = cutmix(x, 1.0, torch.Generator().manual_seed(seed))
        assert sorted(perm.tolist()) == list(range(6)) and 0.0 <= kept <= 1.0
        moved = next(i for i in range(6) if perm[i] != i)  # an image whose partner is another image
        box = mixed[moved, 0] != float(moved)  # where it holds the partner's pixels
        rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
        if len(rows):  # a rectangle: every pixel between its first/last row and column is inside
            assert bool(box[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()) and int(box.sum()) == len(rows) * len(cols)
        assert abs(int(box.sum()) / box.numel() - (1.0 - kept)) < 1e-12
        for i in range(6):
            expect = torch.where(box, float(perm[i]), float(i))
            assert torch.equal(mixed[i], expect.expand(2, 10, 12))
    first = cutmix(x, 1.0, torch.Generator().manual_seed(3))
    again = cutmix(x, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(again[0], first[0]) and again[1] == first[1]
    assert any(cutmix(x, 1.0, torch.Generator().manual_seed(s))[1] < 1.0 for s in range(5))  # boxes are not all empty


def test_cutmix_box_by_hand():
    # 10 x 12, lam 0.75: sides int(10 * 0.5) = 5 -> half 2, int(12 * 0.5) = 6 -> half 3; centre (5, 6)
    assert cutmix_box(10, 12, 0.75, 5, 6) == (3, 7, 3, 9)
    # the same box at the corner (0, 11): clipped to rows 0:2, columns 8:12
    assert cutmix_box(10, 12, 0.75, 0, 11) == (0, 2, 8, 12)
    # lam 0: the box spans the image from its centre (side 10 x 12, half 5 x 6); lam 1: empty
    assert cutmix_box(10, 12, 0.0, 5, 6) == (0, 10, 0, 12)
    y0, y1, x0, x1 = cutmix_box(10, 12, 1.0, 5, 6)
    assert (y1 - y0) * (x1 - x0) == 0


def test_cutmix_box_area_follows_lambda_on_average():
    """Beta(1, 1): E[1 - lam] = 1/2 before clipping; a box of side sqrt(1 - lam) centred uniformly keeps, per axis,
    E[clipped side] = s - s^2 / 4 (s the side as a share), so the expected pasted share is
    E[(s - s^2 / 4)^2] with s = sqrt(u), u ~ U(0, 1): 1/2 - 2/4 * 2/5 + 1/16 * 1/3 = 0.3208 (worked by hand; a side
    of 1 - lam would give 0.221). 256 px: rounding the sides down to even pixels costs < 1%."""
    x = torch.zeros(2, 1, 256, 256)
    g = torch.Generator().manual_seed(0)
    pasted = [1.0 - cutmix(x, 1.0, g)[1] for _ in range(4000)]
    assert abs(sum(pasted) / len(pasted) - 0.3208) < 0.015


def test_mix_batch_without_cutmix_draws_as_mixup_alone():
    """Runs made before CutMix existed reproduce: MixUp alone draws exactly what ``mixup`` draws; neither draws nothing."""
    x = torch.randn(8, 1, 6, 6)
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert torch.equal(mix_batch(x, 0.4, 0.0, g1), mixup(x, 0.4, g2)[0]) and torch.equal(g1.get_state(), g2.get_state())
    g3 = torch.Generator().manual_seed(4)
    assert mix_batch(x, 0.0, 0.0, g3) is x and torch.equal(g3.get_state(), torch.Generator().manual_seed(4).get_state())
    g4, g5 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert torch.equal(mix_batch(x, 0.0, 1.0, g4), cutmix(x, 1.0, g5)[0])


def test_mix_batch_takes_one_of_mixup_and_cutmix_per_batch():
    x = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 1, 6, 6).contiguous()
    assert mix_batch(x, 0.0, 0.0, torch.Generator().manual_seed(0)) is x
    kinds = set()
    for seed in range(30):
        out = mix_batch(x, 0.4, 1.0, torch.Generator().manual_seed(seed))
        # CutMix leaves only the batch's own integer values; MixUp blends them into fractions
        kinds.add("cutmix" if torch.equal(out, out.round()) else "mixup")
    assert kinds == {"cutmix", "mixup"}


def test_distill_with_iq_and_mixup_lowers_both_losses(trained_toy_net):
    student = copy.deepcopy(trained_toy_net)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(64, 1, 8, 8) * 2.0 + 1.5
    hist = distill(student, trained_toy_net, x, cfg(epochs=12, iq_beta=1.0, mixup_alpha=0.4, freeze_bn=False), torch.device("cpu"), 0)
    assert hist[-1]["iq_loss"] < hist[0]["iq_loss"] and hist[-1]["kd_loss"] < hist[0]["kd_loss"]


def test_distill_with_cutmix_lowers_the_kd_loss_and_is_deterministic():
    x = torch.randn(64, 1, 8, 8) * 2.0 + 1.5
    runs = []
    for _ in range(2):
        teacher, student = make_trained_toy_net(), make_trained_toy_net()
        with torch.no_grad():
            for p in student.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        runs.append((distill(student, teacher, x, cfg(epochs=12, cutmix_alpha=1.0, freeze_bn=False), torch.device("cpu"), 0), student))
    (hist, student), (hist2, student2) = runs
    assert hist[-1]["kd_loss"] < hist[0]["kd_loss"]
    plain = make_trained_toy_net()
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    assert distill(plain, make_trained_toy_net(), x, cfg(epochs=12, freeze_bn=False), torch.device("cpu"), 0) != hist  # CutMix ran
    assert hist == hist2 and all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), student2.state_dict().values()))


def test_kd_loss_by_hand_two_classes():
    """Student logits (0, 0) -> p_s = (1/2, 1/2); teacher logits (ln 3, 0) at T = 2 -> p_t = (sqrt3, 1) / (sqrt3 + 1).
    KL(p_t || p_s) * T^2 = 4 * sum_i p_t,i ln(2 p_t,i) = 0.14537; the swapped direction KL(p_s || p_t) * 4 would be
    0.14902 and the loss without T^2 0.03634, so both mistakes fail."""
    import math

    r3 = math.sqrt(3)
    p_t = (r3 / (r3 + 1), 1 / (r3 + 1))
    by_hand = 4 * sum(p * math.log(2 * p) for p in p_t)
    assert by_hand == pytest.approx(0.145368, abs=1e-5)
    got = float(kd_loss(torch.zeros(1, 2), torch.tensor([[math.log(3), 0.0]]), 2.0))
    assert got == pytest.approx(by_hand, abs=1e-6)
    swapped = 4 * sum(0.5 * math.log(0.5 / p) for p in p_t)
    assert abs(got - swapped) > 3e-3 and abs(got - by_hand / 4) > 0.1
    # batch mean: two rows, the second with KL 0, halve it
    two = kd_loss(torch.zeros(2, 2), torch.tensor([[math.log(3), 0.0], [0.0, 0.0]]), 2.0)
    assert float(two) == pytest.approx(by_hand / 2, abs=1e-6)
