import pytest
import yaml

from stages.core.params import SECTIONS, ParamsError, load_params, parse_section, section_with, shipped


def test_defaults_validate():
    for name in SECTIONS:
        section_with(name)


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
        section_with(section, **raw)
    for w in words:
        assert w in str(e.value)


def test_int_accepted_for_float():
    assert section_with("distill", **{"lr": 1}).lr == 1.0
    assert isinstance(section_with("distill", **{"lr": 1}).lr, float)


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
    cfg = section_with("train_teacher", **{"input_shape": [3, 32, 32], "mean": [0.5, 1]})
    assert cfg.input_shape == [3, 32, 32] and cfg.mean == [0.5, 1.0] and isinstance(cfg.mean[1], float)
    with pytest.raises(ParamsError, match="train_teacher.input_shape .* expected a list of integers"):
        section_with("train_teacher", **{"input_shape": [3.5, 32, 32]})
    with pytest.raises(ParamsError, match="train_teacher.std .* expected a list of numbers"):
        section_with("train_teacher", **{"std": "0.3"})


def test_exponent_floats_as_dvc_writes_them(tmp_path):
    """`dvc exp run -S synthesize.lambda_tv=0.00001` writes `lambda_tv: 1e-05` (YAML 1.2); YAML 1.1 would read a string."""
    p = tmp_path / "params.yaml"
    kept = {k: v for k, v in shipped("synthesize").items() if k not in ("lambda_tv", "lambda_bn", "n_images")}
    rest = yaml.safe_dump({"synthesize": kept})
    p.write_text(rest + "  lambda_tv: 1e-05\n  lambda_bn: 1E+1\n  n_images: 256\n")
    cfg = load_params("synthesize", path=p)["synthesize"]
    assert cfg.lambda_tv == 1e-05 and cfg.lambda_bn == 10.0
    # an exponent is a float: an int key still refuses it, naming the key
    p.write_text(rest + "  lambda_tv: 1e-05\n  lambda_bn: 1E+1\n  n_images: 1e3\n")
    with pytest.raises(ParamsError, match="synthesize.n_images"):
        load_params("synthesize", path=p)


def test_one_source_of_defaults_every_key_required():
    """The schema holds no defaults: params.yaml is the only place a default lives, and a partial section is refused
    (before, the dataclasses said 8 teacher epochs, 1024 x 200 synthesis and 40 distill epochs while params.yaml said
    2, 256 x 160 and 160, and a partial section silently took the stale ones)."""
    for name, cls in SECTIONS.items():
        assert all(f.is_required() for f in cls.model_fields.values()), name
        assert sorted(shipped(name)) == sorted(cls.model_fields), name
    raw = shipped("synthesize")
    del raw["n_images"]
    with pytest.raises(ParamsError, match=r"^params.yaml: synthesize.n_images is missing"):
        parse_section("synthesize", raw)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_refused_naming_the_key(bad):
    """YAML's .nan passes every range comparison (NaN < lo and NaN > hi are both False): it must be refused by name."""
    for name, cls in SECTIONS.items():
        for key, f in cls.model_fields.items():
            if f.annotation is float:
                with pytest.raises(ParamsError, match=rf"^params.yaml: {name}.{key} = {bad!r} is not a finite number"):
                    section_with(name, **{key: bad})
    with pytest.raises(ParamsError, match="train_teacher.mean"):
        section_with("train_teacher", mean=[0.5, bad])
    with pytest.raises(ParamsError, match="train_teacher.arch_kwargs"):
        section_with("train_teacher", arch_kwargs={"p": bad})


def test_yaml_nan_in_a_file_is_refused(tmp_path):
    p = tmp_path / "params.yaml"
    rest = {k: v for k, v in shipped("synthesize").items() if k != "lambda_bn"}
    p.write_text(yaml.safe_dump({"synthesize": rest}) + "  lambda_bn: .nan\n")
    with pytest.raises(ParamsError, match=r"synthesize.lambda_bn = nan is not a finite number"):
        load_params("synthesize", path=p)
