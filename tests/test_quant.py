"""Fake quantization: level counts, straight-through gradients, calibration, composition with masks."""

import pytest
import torch

from stages.core.artifacts import save_model
from stages.core.checkpoints import load_model
from stages.core.models import build_model, prunable_layers
from stages.core.pruning import apply_masks, make_permanent, masks_of, prune_l1_unstructured
from stages.core.quant import (
    QuantConv2d,
    QuantLinear,
    act_qparams,
    calibrate,
    layer_bits,
    mse_clip,
    quant_layers,
    quantization_disabled,
    quantize_model,
    set_weight_clip,
)


def quantized(net, wb, ab, first_last=0):
    return quantize_model(net, layer_bits(net, wb, ab, first_last))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_at_most_2_pow_b_weight_levels_per_channel(toy_net, bits):
    quantized(toy_net, bits, 32)
    for _, m in quant_layers(toy_net):
        w = m.quantized_weight().detach().flatten(1)
        for row in w:
            assert len(torch.unique(row)) <= 2**bits
        # symmetric per channel: the largest |w| is kept exactly
        torch.testing.assert_close(w.abs().amax(1), m.weight.detach().flatten(1).abs().amax(1))


def test_swap_keeps_parameters_and_leaves_bn_alone(toy_net):
    params = {n: p for n, p in toy_net.named_parameters()}
    bn = toy_net.bn1
    quantized(toy_net, 4, 4, 8)
    assert isinstance(toy_net.conv1, QuantConv2d) and isinstance(toy_net.fc, QuantLinear)
    assert toy_net.bn1 is bn
    for n, p in toy_net.named_parameters():
        assert p is params[n]
    assert (toy_net.conv1.weight_bits, toy_net.conv2.weight_bits, toy_net.fc.weight_bits) == (8, 4, 8)  # first/last at 8


def test_straight_through_estimator_passes_gradients(toy_net):
    quantized(toy_net, 4, 4)
    calibrate(toy_net, torch.randn(32, 1, 8, 8), 16, "minmax", 99.99, "cpu")
    toy_net.eval()
    x = torch.randn(8, 1, 8, 8, requires_grad=True)
    toy_net(x).sum().backward()
    for _, m in quant_layers(toy_net):
        assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0  # through the input fake-quant too


def test_ste_gradient_is_identity_inside_the_range():
    lin = quantize_model(torch.nn.Sequential(torch.nn.Linear(4, 3)), {"0": (4, 8)})[0]
    lin.act_lo.fill_(-10.0)
    lin.act_hi.fill_(10.0)
    x = torch.randn(5, 4, requires_grad=True)
    lin(x).sum().backward()
    expected = lin.quantized_weight().detach().sum(0).expand(5, 4)
    torch.testing.assert_close(x.grad, expected)


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_calibration_ranges_are_finite_and_cover_zero(trained_toy_net, method):
    quantized(trained_toy_net, 4, 4)
    ranges = calibrate(trained_toy_net, torch.randn(64, 1, 8, 8) * 2 + 1.5, 16, method, 99.0, "cpu")
    assert set(ranges) == {"conv1", "conv2", "fc"}
    for lo, hi in ranges.values():
        assert torch.isfinite(torch.tensor([lo, hi])).all() and lo < hi
    assert ranges["conv2"][0] >= 0  # post-ReLU input
    scale, zero = act_qparams(*torch.tensor(ranges["conv1"]), 4)
    assert scale.item() > 0 and 0 <= zero.item() <= 15 and zero.dtype == torch.int32


def test_low_bit_activations_change_outputs_and_disabling_restores_float(trained_toy_net):
    x = torch.randn(16, 1, 8, 8) * 2 + 1.5
    ref = trained_toy_net(x)
    quantized(trained_toy_net, 2, 2)
    calibrate(trained_toy_net, x, 8, "minmax", 99.99, "cpu")
    assert not torch.allclose(trained_toy_net(x), ref)
    with quantization_disabled(trained_toy_net):
        torch.testing.assert_close(trained_toy_net(x), ref)


def test_pruned_zeros_stay_zero_under_quantization_and_training():
    torch.manual_seed(0)
    m = build_model("resnet20", 10, 1)
    prune_l1_unstructured(m, 0.75, "global")
    masks = masks_of(m)
    make_permanent(m)
    quantized(m, 4, 8, 8)
    apply_masks(m, masks)
    calibrate(m, torch.randn(16, 1, 28, 28), 8, "minmax", 99.99, "cpu")
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m.train()
    for _ in range(2):
        opt.zero_grad()
        m(torch.randn(8, 1, 28, 28)).logsumexp(1).mean().backward()
        opt.step()
    make_permanent(m)
    for name, layer in prunable_layers(m):
        qw = layer.quantized_weight().detach()
        assert (qw[~masks[f"{name}.weight"]] == 0).all()


def test_mse_clip_of_a_hand_worked_channel():
    """w = [2, 1, 1, 1, 1] at 2 bits (levels -s, 0, s): the max grid (s = 2) rounds the four 1s to 0 (1 / 2 = 0.5,
    half to even): error 4. With s < 2 they round to s and 2 clips to s: error (2 - s)^2 + 4 (1 - s)^2, least at
    s = 6 / 5 = 1.2 (error 0.8): clip ratio 0.6."""
    w = torch.tensor([[2.0, 1.0, 1.0, 1.0, 1.0]])
    clip = mse_clip(w, 2)
    torch.testing.assert_close(clip, torch.tensor([0.6]), atol=2e-4, rtol=0)
    net = quantize_model(torch.nn.Sequential(torch.nn.Linear(5, 1, bias=False)), {"0": (2, 32)})
    lin = net[0]
    lin.weight.data.copy_(w)
    set_weight_clip(net, "mse")
    torch.testing.assert_close(lin.quantized_weight().detach(), torch.full((1, 5), 1.2), atol=3e-4, rtol=0)
    assert ((lin.quantized_weight().detach() - w) ** 2).sum() == pytest.approx(0.8, abs=1e-3)


def test_mse_clip_at_2_bits_is_the_lloyd_max_ternary_quantizer_of_a_gaussian():
    """The least-squares 3-level quantizer of N(0, 1) has levels 0, +-1.2240 and thresholds +-0.6120 (Max 1960): a
    uniform grid, so the 2-bit step of a Gaussian channel is 1.224 sigma, whatever its largest weight."""
    torch.manual_seed(0)
    sigma = torch.tensor([0.05, 1.0, 3.0])
    w = torch.randn(3, 400_000) * sigma[:, None]
    step = mse_clip(w, 2) * w.abs().amax(1)  # qmax = 1
    torch.testing.assert_close(step / sigma, torch.full((3,), 1.2240), atol=0.01, rtol=0)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_mse_clip_never_rounds_worse_than_the_max_grid(bits):
    torch.manual_seed(1)
    w = torch.randn(16, 3, 3, 3) * torch.rand(16, 1, 1, 1) + torch.randn(16, 1, 1, 1).pow(3) * (torch.rand(16, 3, 3, 3) > 0.95)
    conv = quantize_model(torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3)), {"0": (bits, 32)})
    conv[0].weight.data.copy_(w)
    plain = ((conv[0].quantized_weight() - w) ** 2).flatten(1).sum(1)
    set_weight_clip(conv, "mse")
    fitted = ((conv[0].quantized_weight() - w) ** 2).flatten(1).sum(1)
    assert (fitted <= plain + 1e-7).all() and (fitted < plain).any()
    assert ((conv[0].weight_clip > 0) & (conv[0].weight_clip <= 1)).all()
    set_weight_clip(conv, "max")
    torch.testing.assert_close(((conv[0].quantized_weight() - w) ** 2).flatten(1).sum(1), plain)


def test_weight_range_must_be_known(toy_net):
    quantized(toy_net, 2, 4)
    with pytest.raises(ValueError, match="weight range 'minmax' is not one of"):
        set_weight_clip(toy_net, "minmax")


def test_quantized_model_round_trips_through_its_card(tmp_path):
    torch.manual_seed(0)
    m = build_model("resnet20", 10, 1)
    bits = layer_bits(m, 4, 4, 8)
    quantize_model(m, bits)
    set_weight_clip(m, "mse")
    calibrate(m, torch.randn(32, 1, 28, 28), 16, "minmax", 99.99, "cpu")
    save_model(tmp_path, m, {"arch": "resnet20", "num_classes": 10, "in_channels": 1, "quantization": {"layers": bits}})
    loaded, _ = load_model(tmp_path)
    assert isinstance(loaded.layer2[0].conv1, QuantConv2d)
    assert float(loaded.layer2[0].conv1.act_hi) == float(m.layer2[0].conv1.act_hi)
    assert (loaded.layer2[0].conv1.weight_clip < 1).any()
    torch.testing.assert_close(loaded.layer2[0].conv1.weight_clip, m.layer2[0].conv1.weight_clip)
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(loaded(x), m.eval()(x))


def test_first_last_bits_only_where_something_is_quantized(toy_net):
    assert layer_bits(toy_net, 4, 4, 8) == {"conv1": (8, 8), "conv2": (4, 4), "fc": (8, 8)}
    assert layer_bits(toy_net, 32, 8, 8) == {"conv1": (32, 8), "conv2": (32, 8), "fc": (32, 8)}
    assert layer_bits(toy_net, 4, 8, 0) == {"conv1": (4, 8), "conv2": (4, 8), "fc": (4, 8)}


def test_empty_calibration_set_is_a_clear_error(toy_net):
    quantized(toy_net, 4, 4)
    with pytest.raises(ValueError, match="no calibration images"):
        calibrate(toy_net, torch.zeros(0, 1, 8, 8), 8, "minmax", 99.99, "cpu")


def test_calibration_stops_on_non_finite_activations_naming_the_batch(toy_net):
    """A calibration image with inf pixels gives inf activations: one error naming the batch and the layer, before
    any range is set."""
    from stages.core.quant import calibrate, layer_bits, quantize_model

    model = quantize_model(toy_net, layer_bits(toy_net, 8, 8, 8))
    x = torch.randn(10, 1, 8, 8)
    x[7, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"calibration batch 1: conv1 saw non-finite activations"):
        calibrate(model, x, 4, "minmax", 99.9, torch.device("cpu"))
