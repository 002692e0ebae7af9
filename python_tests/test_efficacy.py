"""The efficacy study command: planning, a tiny end-to-end study with resume, tables and claims."""
import json
import os
from pathlib import Path

import pytest
import yaml

from benchmarks import efficacy


def _tiny_preset(tmp_path: Path) -> Path:
    preset = {
        "trainer": "demo",
        "out_dir": str(tmp_path / "runs"),
        "seeds": [0, 1],
        "set": {"data.root": str(tmp_path / "data"), "data.seed": 0, "data.image_size": 64, "data.num_train": 8,
                "data.num_unlabeled": 4, "data.num_val": 4, "data.classes": ["circle", "square"],
                "train.batch_size": 2, "train.unlabeled_batch_size": 2, "train.warmup_iters": 1,
                "train.log_every": 1, "train.ckpt_every": 1, "train.num_threads": 1, "eval.batch_size": 4},
        "teacher_set": {"train.iterations": 2},
        "student_set": {"train.iterations": 2, "train.unlabeled_every": 0},
        "settings": {"full": {}, "scarce": {"teacher_from": "full",
                                            "set": {"data.root": str(tmp_path / "data-scarce"),
                                                    "data.label_fraction": 0.5,
                                                    "data.unlabeled_list": "annotations/train_unlabeled_images.json"}}},
        "rows": [
            {"name": "baseline", "mode": "baseline", "description": "gt only"},
            {"name": "conf_kd", "description": "kd"},
            {"name": "unlabeled_adl", "set": {"train.unlabeled_every": 1}},
            {"name": "unlabeled_adl", "setting": "scarce", "set": {"train.unlabeled_every": 1}},
        ],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(preset))
    return path


def test_plan_trains_each_teacher_once_first(tmp_path):
    preset = efficacy.load_preset(str(_tiny_preset(tmp_path)))
    jobs = efficacy.plan(preset)
    assert [j[0] for j in jobs[:1]] == ["teacher"]
    assert sum(j[4] == "teacher" for j in jobs) == 1  # the scarce setting reuses the full teacher
    assert len(jobs) == 1 + 4 * 2
    cfg = efficacy.row_config(preset, preset["rows"][3], seed=1)
    assert cfg.distill.teacher_checkpoint.endswith(os.path.join("full", "teacher", "teacher", "model.pt"))
    assert cfg.data.label_fraction == 0.5 and cfg.seed == 1 and cfg.data.seed == 0


def test_bad_presets_are_refused(tmp_path):
    path = _tiny_preset(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["rows"].append({"name": "baseline", "mode": "baseline"})
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SystemExit, match="repeats"):
        efficacy.load_preset(str(path))
    data["rows"][-1] = {"name": "x", "setting": "nowhere"}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SystemExit, match="unknown setting"):
        efficacy.load_preset(str(path))
    with pytest.raises(SystemExit, match="not found"):
        efficacy.load_preset(str(tmp_path / "missing.yaml"))


def test_tiny_study_end_to_end_and_resume(tmp_path, monkeypatch):
    path = _tiny_preset(tmp_path)
    md = tmp_path / "EFFICACY.md"
    assert efficacy.main(["--preset", str(path), "--markdown", str(md)]) == 0
    text = md.read_text()
    assert "| full | baseline | gt only | 2 |" in text
    assert "| scarce | unlabeled_adl |" in text
    assert (tmp_path / "EFFICACY.png").stat().st_size > 0
    summary = json.loads((tmp_path / "EFFICACY.json").read_text())["summary"]
    assert {(r["setting"], r["name"]) for r in summary} == {
        ("full", "teacher"), ("full", "baseline"), ("full", "conf_kd"), ("full", "unlabeled_adl"),
        ("scarce", "unlabeled_adl")}
    for r in summary:
        assert 0.0 <= r["AP"] <= 100.0

    # a second run trains nothing: every (row, seed) has its result.json
    import kdkernels.train.cli as cli

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")
    monkeypatch.setattr(cli, "run_stage", no_training)
    assert efficacy.main(["--preset", str(path), "--markdown", str(md)]) == 0
    assert efficacy.main(["--preset", str(path), "--markdown", str(md), "--render"]) == 0
    # the Commands section lists the commands whose runs are in the table (once), not --render
    commands = md.read_text().split("## Commands")[1]
    assert commands.count("python -m benchmarks.efficacy --preset") == 1 and "--render" not in commands


def _row(setting, name, ap, std=0.0, n=3):
    return {"setting": setting, "name": name, "n": n, "AP": ap, "AP_std": std}


def test_claims_are_computed_from_the_rows():
    rows = [_row("full", "teacher", 40.0, n=1), _row("full", "baseline", 20.0), _row("full", "conf_kd", 24.0),
            _row("full", "unlabeled_kl", 24.5), _row("full", "unlabeled_adl", 25.5),
            _row("full", "feat_gt", 22.0, 1.0), _row("full", "feat_conf", 21.5, 0.4),
            _row("scarce", "baseline", 10.0), _row("scarce", "unlabeled_adl", 24.0)]
    got = {c[0].split(" ")[0] + c[0][-12:]: c for c in efficacy.claims(rows)}
    results = [c[2] for c in efficacy.claims(rows)]
    assert results == [True, True, True, True, False]  # scarce closes 14/30 = 47 % < 50 %
    rows[3] = _row("full", "unlabeled_kl", 26.0)
    assert efficacy.claims(rows)[2][2] is False  # ADL below plain KL
    assert got  # every claim has a text
    rows.append(_row("full", "conf_kd_2x", 26.5))
    control = [c for c in efficacy.claims(rows) if c[0].startswith("(control)")]
    assert len(control) == 1 and control[0][2] is False and control[0][1] == "-1.0 AP"


def test_rows_select_by_name_or_by_setting_and_name(tmp_path):
    preset = efficacy.load_preset(str(_tiny_preset(tmp_path)))
    by_name = efficacy.plan(preset, {"unlabeled_adl"}, seeds=[0])
    assert [(j[1], j[0]) for j in by_name] == [("full", "teacher"), ("full", "unlabeled_adl"),
                                               ("scarce", "unlabeled_adl")]
    one = efficacy.plan(preset, {"scarce/unlabeled_adl"}, seeds=[0])
    assert [(j[1], j[0]) for j in one] == [("full", "teacher"), ("scarce", "unlabeled_adl")]
    with pytest.raises(SystemExit, match="unknown rows"):
        efficacy.main(["--preset", str(tmp_path / "tiny.yaml"), "--rows", "scarce/conf_kd", "--dry-run"])


def test_scarce_adl_versus_plain_kl_claim():
    rows = [_row("scarce", "baseline", 2.0), _row("scarce", "unlabeled_adl", 13.0, 0.9),
            _row("scarce", "unlabeled_kl", 14.0, 0.5)]
    line = [c for c in efficacy.claims(rows) if c[0].startswith("label-scarce: unlabeled with ADL")]
    assert line == [("label-scarce: unlabeled with ADL ≥ unlabeled with plain KL", "-1.0 AP (std 0.9)", False)]
    rows[2] = _row("scarce", "unlabeled_kl", 12.5)
    assert [c[2] for c in efficacy.claims(rows) if c[0].startswith("label-scarce: unlabeled")] == [True]
