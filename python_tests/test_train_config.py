"""Trainer configuration: presets load, overrides apply, and every kind of mistake is a ConfigError
that names the field (unknown key, wrong type, out-of-range value, bad choice)."""
import pytest

from kdkernels.train.config import CONFIG_DIR, SHAPES, Config, ConfigError, load_config


@pytest.mark.parametrize("preset", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_presets_load(preset):
    cfg = load_config(preset)
    assert isinstance(cfg, Config)


def test_default_is_the_demo_preset_and_overrides_apply():
    cfg = load_config(None, ["train.iterations=7", "data.classes=[circle, cross]", "distill.temperature=3",
                             "model.anchor_sizes=[4, 8, 16, 32, 64]"])
    assert cfg.out_dir == "runs/demo"
    assert cfg.train.iterations == 7 and cfg.data.classes == ["circle", "cross"]
    assert cfg.distill.temperature == 3.0 and isinstance(cfg.distill.temperature, float)
    assert cfg.model.anchor_sizes == [4, 8, 16, 32, 64]


def test_default_data_is_the_hard_set_and_demo_is_easier():
    hard, demo = Config().data, load_config("demo").data
    assert len(hard.classes) == 8 and hard.min_size == 6.0 and hard.clutter == 1.0
    assert load_config("paper").data.classes == hard.classes
    assert len(demo.classes) < len(hard.classes) and demo.min_size > hard.min_size
    assert demo.clutter < hard.clutter and demo.max_occlusion < hard.max_occlusion


def test_shape_names_match_the_generator():
    from kdkernels.train.synthetic import CLASS_NAMES
    assert SHAPES == CLASS_NAMES


@pytest.mark.parametrize("override, words", [
    ("train.itrations=5", ["unknown config key", "train.itrations"]),
    ("bogus=1", ["unknown config key", "bogus"]),
    ("data.nope.deeper=1", ["unknown config key", "data.nope"]),
    ("train.iterations=many", ["train.iterations", "int", "'many'"]),
    ("train.iterations=2.5", ["train.iterations", "int"]),
    ("train.hflip=3", ["train.hflip", "bool"]),
    ("train.lr=[1]", ["train.lr", "float"]),
    ("model.anchor_sizes=8", ["model.anchor_sizes", "list"]),
    ("model.anchor_sizes=[8, x]", ["model.anchor_sizes[1]", "int"]),
    ("train=5", ["train", "mapping"]),
    ("train.iterations=0", ["train.iterations", "> 0", "0"]),
    ("train.lr=-0.1", ["train.lr", "> 0"]),
    ("train.weight_decay=-1", ["train.weight_decay", ">= 0"]),
    ("distill.feat_threshold=1.5", ["distill.feat_threshold", "[0, 1]"]),
    ("train.optimizer=adam", ["train.optimizer", "sgd", "adamw", "'adam'"]),
    ("model.arch=yolo", ["model.arch", "retinanet"]),
    ("model.anchor_sizes=[8, -16]", ["model.anchor_sizes"]),
    ("data.classes=[circle, blob]", ["data.classes", "'blob'"]),
    ("data.classes=[circle, circle]", ["data.classes", "duplicates"]),
    ("data.classes=[]", ["data.classes"]),
    ("data.min_size=100", ["data.min_size"]),
    ("data.label_fraction=0", ["data.label_fraction", "(0, 1]"]),
    ("data.num_val=0", ["data.num_val", "> 0"]),
    ("data.max_occlusion=2", ["data.max_occlusion", "[0, 1]"]),
    ("train.num_threads=-1", ["train.num_threads", ">= 0"]),
    ("noequals", ["key=value", "noequals"]),
])
def test_bad_values_name_the_field(override, words):
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    for w in words:
        assert w in str(exc.value), (w, str(exc.value))


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist.*presets: .*demo"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("train:\n  iterations: 10\n  warmup: 3\n")
    with pytest.raises(ConfigError, match="unknown config key train.warmup .*warmup_iters"):
        load_config(bad)
    ok = tmp_path / "ok.yaml"
    ok.write_text("train:\n  iterations: 10\n")
    assert load_config(ok).train.iterations == 10


def test_cli_reports_config_errors_with_exit_code_2(capsys):
    from kdkernels.train.cli import main
    assert main(["teacher", "--set", "train.lr=-1"]) == 2
    err = capsys.readouterr().err
    assert "config error" in err and "train.lr" in err


@pytest.mark.parametrize("override, key, value", [
    ("train.lr=1e-3", "lr", 1e-3), ("train.lr=2E-4", "lr", 2e-4), ("train.weight_decay=5e-5", "weight_decay", 5e-5),
    ("train.lr=+1e-2", "lr", 1e-2), ("train.lr=3e+0", "lr", 3.0),
])
def test_exponent_floats_are_floats(override, key, value):
    """YAML 1.1 reads 1e-3 (no dot) as a string; float fields take it as the number it means."""
    got = getattr(load_config(None, [override]).train, key)
    assert isinstance(got, float) and got == pytest.approx(value)


def test_exponent_floats_in_a_config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-3\ndistill:\n  kl_weight: 5e-1\n")
    cfg = load_config(path)
    assert cfg.train.lr == pytest.approx(1e-3) and cfg.distill.kl_weight == pytest.approx(0.5)


@pytest.mark.parametrize("override", [
    "train.lr=.inf", "train.lr=.nan", "train.lr=-.inf", "train.lr=1e999", "distill.kl_weight=.inf",
    "distill.feat_weight=.nan", "distill.loc_weight=.inf", "distill.adl_weight=.nan", "train.grad_clip=.inf",
    "distill.temperature=.inf", "data.noise_std=.nan", "train.momentum=.inf",
])
def test_non_finite_values_are_rejected(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    assert key in str(exc.value) and "finite" in str(exc.value), str(exc.value)


@pytest.mark.parametrize("override", ["train.lr=inf", "train.lr=nan", "train.lr=1e-3x", "train.iterations=1e3"])
def test_other_strings_stay_type_errors(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(None, [override])
