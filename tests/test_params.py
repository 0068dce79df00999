import pytest

from stages.core.params import SECTIONS, ParamsError, load_params, parse_section


def test_defaults_validate():
    for name in SECTIONS:
        parse_section(name, {})


def test_repo_params_yaml_is_valid():
    from conftest import ROOT

    cfg = load_params(*SECTIONS, path=ROOT / "params.yaml")
    assert cfg["prune"].sparsity == 0.75
    # the fast defaults (README "Speed"): 256 images x 160 iterations, distilled for as many steps as 1024 x 40 epochs;
    # precision fits the machine (bf16 only where it is native), never forced in the repo's params
    assert (cfg["synthesize"].n_images, cfg["synthesize"].iterations) == (256, 160)
    assert cfg["synthesize"].precision == cfg["train_teacher"].precision == "auto"
    assert cfg["distill"].epochs * cfg["synthesize"].n_images == 40 * 1024


@pytest.mark.parametrize(
    "section,raw,words",
    [
        ("prune", {"sparsity": 1.5}, ["prune.sparsity", "[0.0, 1.0)"]),
        ("synthesize", {"iterations": -1}, ["synthesize.iterations", "[1, 100000]"]),
        ("prune", {"sparsty": 0.5}, ["unknown key prune.sparsty", "did you mean prune.sparsity"]),
        ("distill", {"lr": "fast"}, ["distill.lr", "wrong type"]),
        ("synthesize", {"n_images": 10.5}, ["synthesize.n_images", "integer"]),
        ("distill", {"freeze_bn": 1}, ["distill.freeze_bn", "true/false"]),
        ("synthesize", {"batch_size": True}, ["synthesize.batch_size", "wrong type"]),
        ("prune", {"scope": "local"}, ["prune.scope", "global", "layerwise"]),
        ("common", {"device": "tpu"}, ["common.device"]),
    ],
)
def test_bad_values_name_key_and_range(section, raw, words):
    with pytest.raises(ParamsError) as e:
        parse_section(section, raw)
    for w in words:
        assert w in str(e.value)


def test_int_accepted_for_float():
    assert parse_section("distill", {"lr": 1}).lr == 1.0
    assert isinstance(parse_section("distill", {"lr": 1}).lr, float)


def test_unknown_section_and_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params("prune", path=tmp_path / "nope.yaml")
    p = tmp_path / "params.yaml"
    p.write_text("prune:\n  sparsity: 0.5\nprnue: {}\n")
    with pytest.raises(ParamsError, match="unknown section"):
        load_params("prune", path=p)
    p.write_text("prune: [1, 2]\n")
    with pytest.raises(ParamsError, match="must be a mapping"):
        load_params("prune", path=p)


def test_arch_names_are_the_registry():
    from stages.core import models, params

    assert params.ARCH_NAMES == models.ARCH_NAMES


def test_list_params_checked_by_item_type():
    cfg = parse_section("train_teacher", {"input_shape": [3, 32, 32], "mean": [0.5, 1]})
    assert cfg.input_shape == (3, 32, 32) and cfg.mean == (0.5, 1.0)
    with pytest.raises(ParamsError, match="train_teacher.input_shape .* expected a list of integers"):
        parse_section("train_teacher", {"input_shape": [3.5, 32, 32]})
    with pytest.raises(ParamsError, match="train_teacher.std .* expected a list of numbers"):
        parse_section("train_teacher", {"std": "0.3"})


def test_exponent_floats_as_dvc_writes_them(tmp_path):
    """`dvc exp run -S synthesize.lambda_tv=0.00001` writes `lambda_tv: 1e-05` (YAML 1.2); YAML 1.1 would read a string."""
    p = tmp_path / "params.yaml"
    p.write_text("synthesize:\n  lambda_tv: 1e-05\n  lambda_bn: 1E+1\n")
    cfg = load_params("synthesize", path=p)["synthesize"]
    assert cfg.lambda_tv == 1e-05 and cfg.lambda_bn == 10.0
    p.write_text("synthesize:\n  n_images: 1e3\n")  # an exponent is a float: an int key still refuses it, naming the key
    with pytest.raises(ParamsError, match="synthesize.n_images"):
        load_params("synthesize", path=p)
