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


# ----------------------------------------------------------------------------- peer presets (issue 12)
def test_cpu_preset_peer_rows_config_plumbing():
    """The peer rows of the CPU preset: same student and schedule as the thesis rows, the method and
    its tuned scale (peer_scales), the best-label-free-peer placeholder; nothing is trained."""
    preset = efficacy.load_preset("cpu")
    rows = {(r["setting"], r["name"]): r for r in preset["rows"]}
    for name in ("cwd", "pkd", "fgd", "fgd_conf"):
        cfg = efficacy.row_config(preset, rows[("full", name)], seed=1)
        thesis = efficacy.row_config(preset, rows[("full", "conf_kd")], seed=1)
        assert cfg.distill.method == name and cfg.distill.method_weight == preset["peer_scales"][name]
        assert cfg.train == thesis.train and cfg.model == thesis.model and cfg.data == thesis.data
        assert cfg.distill.teacher_checkpoint == thesis.distill.teacher_checkpoint
        assert thesis.distill.method == "thesis"
    unl = efficacy.row_config(preset, rows[("full", "peer_unlabeled")], seed=0)
    adl = efficacy.row_config(preset, rows[("full", "unlabeled_adl")], seed=0)
    assert unl.distill.method == preset["vars"]["best_label_free_peer"] == "cwd"
    assert unl.distill.method_weight == preset["peer_scales"]["cwd"]
    assert (unl.train.iterations, unl.train.unlabeled_every) == (adl.train.iterations, adl.train.unlabeled_every) == (1200, 1)
    for name in ("fgd", "fgd_conf"):
        cfg = efficacy.row_config(preset, rows[("scarce", name)], seed=0)
        ref = efficacy.row_config(preset, rows[("scarce", "unlabeled_adl")], seed=0)
        assert cfg.distill.method == name and cfg.train == ref.train and cfg.data == ref.data
    # the tuned scale and the placeholder are each one edit (or --var)
    preset["peer_scales"]["pkd"] = 4.0
    preset["vars"]["best_label_free_peer"] = "pkd"
    assert efficacy.row_config(preset, rows[("full", "pkd")], seed=0).distill.method_weight == 4.0
    unl = efficacy.row_config(preset, rows[("full", "peer_unlabeled")], seed=0)
    assert unl.distill.method == "pkd" and unl.distill.method_weight == 4.0
    assert "(pkd)" in efficacy.fill_text(rows[("full", "peer_unlabeled")]["description"], preset)
    efficacy.load_preset("gpu")  # the GPU preset has the same rows


def test_tune_rows_run_on_their_own_seed(tmp_path, capsys):
    preset = efficacy.load_preset("cpu")
    jobs = efficacy.plan(preset, tune=True)
    assert jobs[0][4] == "teacher" and len(jobs) == 1 + 4 * 3
    assert {j[3] for j in jobs[1:]} == {100}
    names = [j[0] for j in jobs[1:]]
    assert names[:3] == ["tune_cwd_x0.25", "tune_cwd_x1", "tune_cwd_x4"] and "tune_fgd_conf_x4" in names
    row = next(r for r in preset["tune_rows"] if r["name"] == "tune_fgd_x0.25")
    cfg = efficacy.row_config(preset, row, seed=100)
    assert cfg.distill.method == "fgd" and cfg.distill.method_weight == 0.25 and cfg.seed == 100
    assert cfg.train.iterations == 600 and cfg.train.unlabeled_every == 0
    assert efficacy.main(["--tune", "--rows", "tune_pkd_x4", "--dry-run"]) == 0
    assert "tune_pkd_x4" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown rows"):
        efficacy.main(["--tune", "--rows", "cwd", "--dry-run"])
    with pytest.raises(SystemExit, match="no tune section"):
        efficacy.main(["--preset", str(_tiny_preset(tmp_path)), "--tune", "--dry-run"])
    assert efficacy.main(["--var", "best_label_free_peer=cwd", "--rows", "peer_unlabeled", "--seeds", "0", "--dry-run"]) == 0
    assert "peer_unlabeled       seed 0 (distill, cwd)" in capsys.readouterr().out


def test_unknown_placeholder_names_the_row(tmp_path):
    path = _tiny_preset(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["rows"].append({"name": "peer", "set": {"distill.method": "${nope}"}})
    path.write_text(yaml.safe_dump(data))
    preset = efficacy.load_preset(str(path))
    with pytest.raises(SystemExit, match=r"full/peer uses \$\{nope\}"):
        efficacy.row_config(preset, preset["rows"][-1], seed=0)


def _run(ap):
    return {"metrics": {"AP": ap, "AP50": ap, "AP75": ap}, "train_eval_seconds": 1.0}


def test_tuning_and_head_to_head_tables(tmp_path):
    preset = efficacy.load_preset("cpu")
    preset["peer_scales"]["cwd"] = 4.0
    raw = {"full": {"teacher": {"0": _run(20.0)},
                    "tune_cwd_x0.25": {"100": _run(8.0)}, "tune_cwd_x1": {"100": _run(9.5)},
                    "tune_cwd_x4": {"100": _run(9.0)}, "tune_fgd_x1": {"100": _run(7.0)},
                    "tune_fgd_x4": {"100": _run(7.0)},
                    "conf_kd": {"0": _run(9.0), "1": _run(10.0)}, "cwd": {"0": _run(11.0), "1": _run(12.0)},
                    "fgd": {"0": _run(9.2), "1": _run(9.6)}},
           "scarce": {"unlabeled_adl": {"0": _run(12.0), "1": _run(12.2)}, "fgd_conf": {"0": _run(10.0), "1": _run(10.1)}}}
    tuned = {t["method"]: t for t in efficacy.tuning(raw, preset)}
    assert tuned["cwd"]["chosen"] == 1.0 and tuned["cwd"]["preset"] == 4.0
    assert tuned["fgd"]["chosen"] == 1.0  # a tie goes to the published weights
    pairs = {(p[0], p[2]): p for p in efficacy.head_to_head(efficacy.summarize(raw, preset))}
    assert pairs[("full", "cwd")][5] == pytest.approx(-2.0) and pairs[("full", "cwd")][7] == "**peer wins**"
    assert pairs[("full", "fgd")][7] == "within the spread"
    assert pairs[("scarce", "fgd_conf")][7] == "thesis wins"
    raw["full"]["fgd"]["2"] = _run(1.0)  # a seed only one row of the pair ran: not counted
    paired = {(p[0], p[2]): p[8] for p in efficacy.head_to_head(efficacy.summarize(raw, preset), raw)}
    assert paired[("full", "cwd")] == "0/2" and paired[("scarce", "fgd_conf")] == "2/2"
    assert paired[("full", "fgd")] == "1/2"  # 9.0 < 9.2, 10.0 > 9.6
    del raw["full"]["fgd"]["2"]
    md = tmp_path / "E.md"
    text = efficacy.render(raw, preset, md, tmp_path / "E.png", ["cmd"])
    assert "## Head to head" in text and "| full | conf_kd | cwd | 9.5 | 11.5 | -2.0 | 0.7 | **peer wins** | 0/2 |" in text
    assert "## Peer weight tuning (seed 100, setting full)" in text
    assert "| cwd | 8.0 | 9.5 | 9.0 | × 1 | × 4 (differs) |" in text
    assert "| fgd | — | 7.0 | 7.0 | × 1 | × 1 |" in text
    assert "tune_cwd" not in text.split("## Head to head")[0]  # tuning runs stay out of the main table
