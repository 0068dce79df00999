"""Cost measures: MACs, nonzero MACs, effective bits, compact bit-mask storage, latency."""

import torch
from torch import nn

from stages.core.artifacts import pack_sparse, save_model, unpack_sparse
from stages.core.checkpoints import load_model
from stages.core.cost import effective_bits, latency_ms, macs
from stages.core.models import build_model
from stages.core.pruning import make_permanent, prune_l1_unstructured
from stages.core.quant import layer_bits, quantize_model


def test_macs_of_a_conv_and_linear_match_the_formula():
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    m = macs(net, (2, 6, 6))
    assert m["macs"] == 4 * 6 * 6 * (2 * 9) + 5 * 144
    with torch.no_grad():
        net[0].weight[:2] = 0  # half the output channels' weights
    assert macs(net, (2, 6, 6))["nonzero_macs"] == 2 * 6 * 6 * (2 * 9) + 5 * 144


def test_effective_bits_counts_nonzeros_bits_and_index(toy_net):
    total = sum(v.numel() for k, v in toy_net.state_dict().items() if not k.endswith("num_batches_tracked"))
    assert effective_bits(toy_net, sparse_storage=False) == 32 * total
    prune_l1_unstructured(toy_net, 0.5, "global")
    make_permanent(toy_net)
    w = {k: v for k, v in toy_net.state_dict().items() if k in ("conv1.weight", "conv2.weight", "fc.weight")}
    nnz, numel = sum(int((v != 0).sum()) for v in w.values()), sum(v.numel() for v in w.values())
    quantize_model(toy_net, layer_bits(toy_net, 4, 8, 0))
    channels = sum(v.shape[0] for v in w.values())
    rest = total - numel + 2 * 3 + channels  # + each layer's activation range (lo, hi) and per-channel weight clip, 32 bits each
    qnnz = sum(int((m.quantized_weight() != 0).sum()) for m in (toy_net.conv1, toy_net.conv2, toy_net.fc))
    assert qnnz <= nnz  # rounding can only add zeros
    assert effective_bits(toy_net, sparse_storage=True) == 4 * qnnz + numel + 32 * rest
    assert effective_bits(toy_net, sparse_storage=False) == 4 * numel + 32 * rest  # dense: every weight stored


def test_bitmask_storage_round_trips_and_is_smaller(tmp_path):
    torch.manual_seed(0)
    m = build_model("resnet20", 10, 1)
    prune_l1_unstructured(m, 0.75, "global")
    make_permanent(m)
    card = {"arch": "resnet20", "num_classes": 10, "in_channels": 1}
    (tmp_path / "dense").mkdir()
    (tmp_path / "sparse").mkdir()
    save_model(tmp_path / "dense", m, card)
    save_model(tmp_path / "sparse", m, card, storage="bitmask")
    dense = (tmp_path / "dense" / "model.safetensors").stat().st_size
    sparse = (tmp_path / "sparse" / "model.safetensors").stat().st_size
    assert sparse < 0.4 * dense
    loaded, c = load_model(tmp_path / "sparse")
    assert c["storage"] == "bitmask"
    for k, v in m.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)


def test_pack_unpack_inverse():
    w = torch.randn(3, 5, 7) * (torch.rand(3, 5, 7) > 0.6)
    packed = pack_sparse({"a.weight": w, "b": torch.ones(2)}, ["a.weight"])
    assert packed["a.weight.bitmask"].dtype == torch.uint8 and packed["a.weight.bitmask"].numel() == (105 + 7) // 8
    out = unpack_sparse(packed, {"a.weight": [3, 5, 7]})
    torch.testing.assert_close(out["a.weight"], w)


def test_latency_is_positive_and_leaves_model_and_threads_untouched(toy_net):
    threads = torch.get_num_threads()
    ms = latency_ms(toy_net, (1, 8, 8), 4, 1, 3)
    assert ms > 0
    assert torch.get_num_threads() == threads
    assert toy_net.conv1.weight.is_contiguous()  # timing used a copy
