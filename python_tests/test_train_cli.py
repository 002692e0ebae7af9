"""End to end through every `kdkernels-train` command with tiny settings (64 px images, a few
images, 3–5 iterations): make-data, teacher, baseline, distill, eval, demo, step-bench, --resume
(continues at the checkpoint's iteration, and a crashed run resumed equals an uninterrupted one),
atomic checkpoints that load, and a 2-process gloo DDP run through torchrun."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")

from kdkernels.train import trainer  # noqa: E402
from kdkernels.train.checkpoint import load_verified  # noqa: E402
from kdkernels.train.cli import main  # noqa: E402
from kdkernels.train.config import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

TINY = ["data.image_size=64", "data.num_train=6", "data.num_unlabeled=4", "data.num_val=4",
        "data.classes=[circle, square]", "data.min_size=10", "data.max_objects=3",
        "model.anchor_sizes=[12, 24, 48, 96, 192]",
        "train.iterations=3", "train.batch_size=2", "train.unlabeled_batch_size=2", "train.unlabeled_every=1",
        "train.warmup_iters=1", "train.log_every=1", "train.ckpt_every=2", "train.num_threads=1",
        "eval.batch_size=4"]


def _args(base, *extra):
    out = []
    for s in TINY + [f"data.root={base / 'data'}", f"out_dir={base / 'runs'}"] + list(extra):
        out += ["--set", s]
    return out


def _cfg(base, *extra):
    return load_config(None, TINY + [f"data.root={base / 'data'}", f"out_dir={base / 'runs'}"] + list(extra))


def _history_iterations(path):
    return [row["iteration"] for row in json.loads(Path(path).read_text())["history"]]


@pytest.fixture(scope="module", autouse=True)
def _restore_threads():
    n = torch.get_num_threads()  # the runs below set train.num_threads=1 (process-wide)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("train_cli")


@pytest.fixture(scope="module")
def data(base):
    assert main(["make-data", *_args(base)]) == 0
    return base / "data"


@pytest.fixture(scope="module")
def trained(base, data):
    """teacher, baseline and distill, each through its CLI command."""
    for mode in ("teacher", "baseline", "distill"):
        assert main([mode, *_args(base)]) == 0, mode
    return base / "runs"


def test_make_data(base, data, capsys):
    meta = json.loads((data / "dataset.json").read_text())
    assert meta["class_names"] == ["circle", "square"]
    assert meta["counts"]["num_train"] == 6 and meta["counts"]["num_val"] == 4
    assert meta["params"]["image_size"] == 64 and meta["params"]["min_size"] == 10
    assert len(list((data / "images" / "unlabeled").glob("*.png"))) == 4
    # same settings: nothing to do; other settings: regenerated in place
    assert main(["make-data", *_args(base)]) == 0
    assert "already holds" in capsys.readouterr().out
    other = base / "other"
    assert main(["make-data", "--out", str(other), *_args(base), "--num-val", "2"]) == 0
    assert json.loads((other / "dataset.json").read_text())["counts"]["num_val"] == 2
    assert main(["make-data", *_args(base, f"data.root={other}")]) == 0
    assert "regenerating" in capsys.readouterr().out
    assert json.loads((other / "dataset.json").read_text())["counts"]["num_val"] == 4
    # a folder holding something else is not overwritten
    foreign = base / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    assert main(["make-data", *_args(base, f"data.root={foreign}")]) == 1
    assert "not empty" in capsys.readouterr().err and (foreign / "keep.txt").exists()


@pytest.mark.parametrize("mode", ["teacher", "baseline", "distill"])
def test_stage_outputs_and_atomic_checkpoints(trained, mode):
    out = trained / mode
    for name in ("model.pt", "checkpoint.pt", "checkpoint.prev.pt", "metrics.json", "loss_curve.png",
                 "config_hash.txt"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*tmp*")), "temp files of the atomic save were left behind"
    ckpt = load_verified(out / "checkpoint.pt", kind="checkpoint")
    assert ckpt["iteration"] == 3 and ckpt["mode"] == mode
    model = load_verified(out / "model.pt", kind="model")
    assert model["num_classes"] == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert _history_iterations(out / "metrics.json") == [1, 2, 3]
    keys = set(metrics["history"][0]) | set(metrics["history"][1])
    if mode == "distill":  # labeled steps have GT + KD terms, unlabeled ones (every 2nd) ADL
        assert {"det_classification", "kd_kl", "kd_feat", "kd_loc", "kd_unlabeled"} <= keys
        assert metrics["unlabeled_steps"] == 1 and metrics["labeled_steps"] == 2
    else:
        assert not any(k.startswith("kd_") for k in keys)
    for row in metrics["history"]:
        assert all(v == v and abs(v) < 1e6 for v in row.values())  # finite


def test_atomic_save_replaces_in_one_step(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    trainer.atomic_save({"a": 1}, path)

    def boom(obj, f, *a, **k):
        Path(f).write_bytes(b"half a file")
        raise RuntimeError("disk full")
    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError):
        trainer.atomic_save({"a": 2}, path)
    assert torch.load(path, weights_only=False) == {"a": 1}  # the old checkpoint is intact


def test_eval_prints_the_ap_table(base, trained, capsys):
    assert main(["eval", *_args(base)]) == 0
    out = capsys.readouterr().out
    assert "| model | AP | AP50 | AP75 | APs | APm | APl |" in out
    for row in ("teacher (demo-teacher)", "student baseline (demo-student)", "student distilled (demo-student)"):
        assert row in out
    results = json.loads((trained / "eval.json").read_text())
    assert len(results) == 3 and all(set(r) == {"AP", "AP50", "AP75", "APs", "APm", "APl"} for r in results.values())
    assert (trained / "ap_bars.png").is_file() and (trained / "eval.md").is_file()
    assert main(["eval", *_args(base), "--which", "teacher"]) == 0


def test_eval_of_an_untrained_stage_is_a_clear_error(base, data, capsys):
    assert main(["eval", *_args(base, f"out_dir={base / 'empty'}"), "--which", "baseline"]) == 1
    err = capsys.readouterr().err
    assert "model file" in err and "does not exist" in err


def test_demo_reuses_trained_stages(base, trained, capsys):
    assert main(["demo", *_args(base)]) == 0
    out = capsys.readouterr().out
    assert out.count("already trained with this config") == 3
    assert "| teacher (demo-teacher) |" in out
    demo = json.loads((trained / "demo.json").read_text())
    assert len(demo["results"]) == 3 and demo["wall_seconds"] > 0


def test_resume_continues_from_the_checkpoint(base, trained, capsys, monkeypatch):
    seen = []
    monkeypatch.setattr(trainer, "_STEP_HOOK", lambda mode, it: seen.append(it))
    assert main(["distill", *_args(base, "train.iterations=5"), "--resume"]) == 0
    assert "resumed from" in (printed := capsys.readouterr().out) and "at iteration 3" in printed
    assert seen == [3, 4]  # continues, does not restart
    out = trained / "distill"
    assert _history_iterations(out / "metrics.json") == [1, 2, 3, 4, 5]
    assert json.loads((out / "metrics.json").read_text())["start_iteration"] == 3
    assert load_verified(out / "checkpoint.pt", kind="checkpoint")["iteration"] == 5
    # other settings than the iteration count: --resume refuses with the differing key named
    assert main(["distill", *_args(base, "train.iterations=6", "train.lr=0.5"), "--resume"]) == 1
    assert "train.lr" in capsys.readouterr().err


def test_crash_then_resume_equals_an_uninterrupted_run(base, data, monkeypatch):
    """A run killed after its iteration-2 checkpoint and resumed ends with the same weights as a run
    that was never interrupted (deterministic batches, restored optimizer and RNG state)."""
    full = _cfg(base, f"out_dir={base / 'full'}", "train.iterations=4")
    trainer.train(full, "baseline", progress=False)

    class Crash(Exception):
        pass

    def crash(mode, it):
        if it == 3:
            raise Crash
    crashed = _cfg(base, f"out_dir={base / 'crashed'}", "train.iterations=4")
    monkeypatch.setattr(trainer, "_STEP_HOOK", crash)
    with pytest.raises(Crash):
        trainer.train(crashed, "baseline", progress=False)
    assert load_verified(base / "crashed" / "baseline" / "checkpoint.pt", kind="checkpoint")["iteration"] == 2
    assert not (base / "crashed" / "baseline" / "model.pt").exists()
    monkeypatch.setattr(trainer, "_STEP_HOOK", None)
    metrics = trainer.train(crashed, "baseline", resume=True, progress=False)
    assert metrics["start_iteration"] == 2
    a = load_verified(base / "full" / "baseline" / "model.pt", kind="model")["model"]
    b = load_verified(base / "crashed" / "baseline" / "model.pt", kind="model")["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_step_bench(base, data, capsys):
    out = base / "bench.json"
    assert main(["step-bench", *_args(base), "--repeats", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    for kind in ("labeled", "unlabeled"):
        rows = report["batches"][kind]
        assert rows["no KD losses"]["kd_share_pct"] is None
        for name in ("KD via kdkernels", "KD via eager PyTorch"):
            assert rows[name]["median_ms"] > 0 and 0 <= rows[name]["kd_share_pct"] < 100
            assert 0 < rows[name]["kd_ops_ms"] and 0 < rows[name]["kd_ops_share_pct"] < 100
    assert report["trained_teacher"] is None or report["trained_teacher"].endswith("model.pt")
    assert "KD share of step" in capsys.readouterr().out


def test_bad_data_is_a_clear_error(base, data, capsys):
    bad = base / "bad"
    (bad / "annotations").mkdir(parents=True)
    (bad / "images" / "train").mkdir(parents=True)
    (bad / "annotations" / "instances_train.json").write_text("{not json")
    assert main(["teacher", *_args(base, f"data.root={bad}")]) == 1
    err = capsys.readouterr().err
    assert "instances_train.json" in err and "invalid JSON" in err


def test_ddp_two_processes_gloo(base, trained):
    """torchrun --nproc_per_node 2 on the CPU (gloo): one shared model, rank 0 writes the outputs."""
    out_dir = base / "ddp"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "kdkernels.train", "distill", *_args(base, f"out_dir={out_dir}",
                                                      f"distill.teacher_checkpoint={trained / 'teacher' / 'model.pt'}",
                                                      "train.num_threads=0")]
    proc = subprocess.run(cmd, cwd=base, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((out_dir / "distill" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and _history_iterations(out_dir / "distill" / "metrics.json") == [1, 2, 3]
    assert load_verified(out_dir / "distill" / "model.pt", kind="model")["num_classes"] == 2
    assert proc.stdout.count("[distill] 3 iterations") == 1  # only rank 0 reports
