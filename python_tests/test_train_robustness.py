"""The trainer never loses or corrupts a run: --resume refuses to shrink a run, checkpoints carry a
sha256 checksum and keep the previous good one (bit flips, truncation and garbage are clear errors
naming the file, and --resume falls back), a bad teacher file is a clear error, SIGINT/SIGTERM save a
checkpoint and exit cleanly, a train/val category mismatch is an error, and the step bench takes its
backend from kdkernels.available_backends. Tiny settings as in test_train_cli (64 px, 2-4 steps)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")

import kdkernels  # noqa: E402
from kdkernels.train import trainer  # noqa: E402
from kdkernels.train.checkpoint import CheckpointError, load_verified, previous_path, save_verified  # noqa: E402
from kdkernels.train.cli import main  # noqa: E402
from test_train_cli import ROOT, _args, _cfg  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _restore_threads():
    n = torch.get_num_threads()  # the runs below set train.num_threads=1 (process-wide)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("train_robust")


@pytest.fixture(scope="module")
def data(base):
    assert main(["make-data", *_args(base)]) == 0
    return base / "data"


@pytest.fixture(scope="module")
def pristine(base, data):
    """A finished 4-iteration baseline run (checkpoints at iterations 2 and 4) that tests only read."""
    assert main(["baseline", *_args(base, f"out_dir={base / 'pristine'}", "train.iterations=4")]) == 0
    return base / "pristine"


@pytest.fixture
def run(base, data, tmp_path):
    """A fresh finished 4-iteration baseline run of this test's own (out_dir is part of its config)."""
    out = tmp_path / "runs"
    assert main(["baseline", *_args(base, f"out_dir={out}", "train.iterations=4")]) == 0
    return out


def _resume(base, out, iterations, mode="baseline"):
    return main([mode, *_args(base, f"out_dir={out}", f"train.iterations={iterations}"), "--resume"])


def _no_traceback(text):
    assert "Traceback" not in text, text


# ----------------------------------------------------------------------------- --resume and the iteration count
def test_resume_below_the_checkpoint_iteration_is_refused(base, run, capsys):
    ckpt, model = run / "baseline" / "checkpoint.pt", run / "baseline" / "model.pt"
    before = ckpt.read_bytes(), model.read_bytes(), (run / "baseline" / "metrics.json").read_text()
    assert _resume(base, run, 2) == 1
    err = capsys.readouterr().err
    assert "iteration 4" in err and "train.iterations=2" in err and str(ckpt) in err, err
    _no_traceback(err)
    assert (ckpt.read_bytes(), model.read_bytes(), (run / "baseline" / "metrics.json").read_text()) == before


def test_resume_at_the_checkpoint_iteration_changes_nothing(base, run, capsys):
    assert _resume(base, run, 4) == 0
    assert "at iteration 4" in capsys.readouterr().out
    assert load_verified(run / "baseline" / "checkpoint.pt", kind="checkpoint")["iteration"] == 4


def test_compatible_resume_starts_over_instead_of_shrinking_or_failing(base, run, capsys):
    """resume="compatible" (demo, efficacy study): a checkpoint beyond train.iterations, or only damaged
    checkpoints, mean starting over, with a message, not an error and not a silently rewritten run."""
    cfg = _cfg(base, f"out_dir={run}", "train.iterations=2")
    assert trainer.train(cfg, "baseline", resume="compatible", progress=False)["start_iteration"] == 0
    assert "train.iterations=2 < its iteration 4" in capsys.readouterr().out
    ckpt = run / "baseline" / "checkpoint.pt"
    ckpt.write_bytes(b"junk")
    previous_path(ckpt).write_bytes(b"junk")
    assert trainer.train(cfg, "baseline", resume="compatible", progress=False)["start_iteration"] == 0
    out = capsys.readouterr().out
    assert "cannot resume" in out and str(ckpt) in out and "starting from scratch" in out


# ----------------------------------------------------------------------------- checksums and the previous checkpoint
def test_checkpoints_are_verified_and_the_previous_one_is_kept(run):
    ckpt = run / "baseline" / "checkpoint.pt"
    assert load_verified(ckpt, kind="checkpoint")["iteration"] == 4
    assert load_verified(previous_path(ckpt), kind="checkpoint")["iteration"] == 2
    model = load_verified(run / "baseline" / "model.pt", kind="model")
    assert model["num_classes"] == 2 and "model" in model
    with pytest.raises(CheckpointError, match=r"model\.pt.*model file, not a training checkpoint"):
        load_verified(run / "baseline" / "model.pt", kind="checkpoint")


def test_every_single_byte_flip_is_detected(tmp_path):
    """Flip each byte of a small checkpoint: loading either fails with CheckpointError naming the file
    or (a flip in an unused zip field) returns exactly what was saved; never other data, never another error."""
    path = tmp_path / "c.pt"
    obj = {"w": torch.arange(6, dtype=torch.float32), "iteration": 3, "history": [{"loss": 0.5}]}
    save_verified(obj, path, kind="checkpoint")
    good = path.read_bytes()
    detected = 0
    for i in range(0, len(good), 3):
        bad = bytearray(good)
        bad[i] ^= 0x10
        path.write_bytes(bytes(bad))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. torch's note on an unusual pickle protocol byte
                got = load_verified(path, kind="checkpoint")
        except CheckpointError as exc:
            assert str(path) in str(exc)
            detected += 1
            continue
        assert torch.equal(got["w"], obj["w"]) and got["iteration"] == 3 and got["history"] == obj["history"], i
    assert detected > len(good) // 6


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "empty"])
def test_resume_falls_back_to_the_previous_checkpoint(base, run, capsys, damage):
    ckpt = run / "baseline" / "checkpoint.pt"
    raw = ckpt.read_bytes()
    bad = {"flip": raw[:len(raw) // 2] + bytes([raw[len(raw) // 2] ^ 1]) + raw[len(raw) // 2 + 1:],
           "truncate": raw[:len(raw) // 3], "garbage": b"\x00garbage" * 50, "empty": b""}[damage]
    ckpt.write_bytes(bad)
    assert _resume(base, run, 5) == 0
    out = capsys.readouterr().out
    assert str(ckpt) in out and str(previous_path(ckpt)) in out and "falling back" in out, out
    assert "at iteration 2" in out
    assert load_verified(ckpt, kind="checkpoint")["iteration"] == 5
    assert [r["iteration"] for r in json.loads((run / "baseline" / "metrics.json").read_text())["history"]] \
        == [1, 2, 3, 4, 5]


def test_resume_falls_back_when_the_newest_is_missing(base, run, capsys):
    """A crash between moving checkpoint.pt to the previous one and renaming the new one in place."""
    (run / "baseline" / "checkpoint.pt").unlink()
    assert _resume(base, run, 3) == 0
    assert "at iteration 2" in capsys.readouterr().out


def test_no_usable_checkpoint_is_a_clear_error(base, run, capsys):
    ckpt = run / "baseline" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    previous_path(ckpt).write_bytes(b"junk")
    assert _resume(base, run, 5) == 1
    err = capsys.readouterr().err
    assert str(ckpt) in err and str(previous_path(ckpt)) in err and "corrupt" in err, err
    _no_traceback(err)
    assert ckpt.read_bytes() and previous_path(ckpt).read_bytes() == b"junk"  # nothing overwritten
    previous_path(ckpt).unlink()  # no previous one at all: the same error for the newest alone
    assert _resume(base, run, 5) == 1
    assert str(ckpt) in capsys.readouterr().err


def test_a_corrupt_checkpoint_is_not_moved_over_the_good_previous_one(run):
    ckpt = run / "baseline" / "checkpoint.pt"
    ckpt.write_bytes(b"junk")
    trainer.save_checkpoint({"iteration": 6}, ckpt)
    assert load_verified(ckpt, kind="checkpoint")["iteration"] == 6
    assert load_verified(previous_path(ckpt), kind="checkpoint")["iteration"] == 2  # kept, not the junk
    trainer.save_checkpoint({"iteration": 7}, ckpt)  # a good newest one becomes the previous one
    assert load_verified(previous_path(ckpt), kind="checkpoint")["iteration"] == 6


# ----------------------------------------------------------------------------- the teacher file
def _bad_teacher(run, tmp_path, kind):
    path = tmp_path / f"teacher_{kind}.pt"
    model = (run / "baseline" / "model.pt").read_bytes()
    if kind == "garbage":
        path.write_bytes(b"this is not a model file\n" * 20)
    elif kind == "truncated":
        path.write_bytes(model[:len(model) // 2])
    elif kind == "flipped":
        path.write_bytes(model[:len(model) // 2] + bytes([model[len(model) // 2] ^ 4]) + model[len(model) // 2 + 1:])
    elif kind == "checkpoint":
        shutil.copy(run / "baseline" / "checkpoint.pt", path)
    elif kind == "plain_state_dict":
        torch.save({"weights": torch.zeros(2)}, path)
    elif kind == "other_classes":
        from kdkernels.train.models import build_detector
        det = build_detector("demo-student", 3, 64, anchor_sizes=(12, 24, 48, 96, 192), head_norm=True)
        save_verified({"model": det.state_dict(), "preset": "demo-student", "num_classes": 3, "config": {}},
                      path, kind="model")
    return path


@pytest.mark.parametrize("kind, words", [
    ("garbage", ["not a readable"]), ("truncated", ["not a readable"]), ("flipped", ["corrupt"]),
    ("checkpoint", ["training checkpoint, not a model file"]), ("plain_state_dict", ["not a kdkernels-train model"]),
    ("other_classes", ["3 classes", "2"]),
])
def test_a_bad_teacher_file_is_a_clear_error(base, pristine, tmp_path, capsys, kind, words):
    path = _bad_teacher(pristine, tmp_path, kind)
    rc = main(["distill", *_args(base, f"out_dir={tmp_path / 'd'}", f"distill.teacher_checkpoint={path}")])
    err = capsys.readouterr().err
    assert rc == 1 and str(path) in err and "teacher" in err, err
    for w in words:
        assert w in err, (w, err)
    _no_traceback(err)


# ----------------------------------------------------------------------------- SIGINT / SIGTERM
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_a_checkpoint_and_exits_cleanly(base, data, tmp_path, capsys, sig):
    out = tmp_path / "runs"
    ckpt = out / "baseline" / "checkpoint.pt"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "kdkernels.train", "baseline",
           *_args(base, f"out_dir={out}", "train.iterations=100000", "train.ckpt_every=2")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ckpt.is_file():  # training has started (the handlers are installed before step 0)
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, (proc.returncode, stdout[-2000:], stderr[-2000:])
    _no_traceback(stderr)
    state = load_verified(ckpt, kind="checkpoint")
    it = state["iteration"]
    assert 2 <= it < 100000
    assert signal.Signals(sig).name in stderr and str(ckpt) in stderr and "--resume" in stderr
    assert f"iteration {it}" in stderr
    assert not list(ckpt.parent.glob(".*tmp*"))
    # the saved state resumes where it stopped
    assert main(["baseline", *_args(base, f"out_dir={out}", f"train.iterations={it + 1}"), "--resume"]) == 0
    assert f"at iteration {it}" in capsys.readouterr().out


def _killed_mid_write(path):
    """A process that dies by SIGKILL inside atomic_write, after writing part of the temp file."""
    code = ("import os, signal; from pathlib import Path; from kdkernels.train.checkpoint import atomic_write\n"
            "def write(tmp):\n    Path(tmp).write_bytes(b'x' * 4096); os.kill(os.getpid(), signal.SIGKILL)\n"
            f"atomic_write({str(path)!r}, write)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (tmp,) = path.parent.glob(f".{path.name}.tmp*")
    return tmp


def test_resume_sweeps_the_temp_file_of_a_write_killed_by_sigkill(base, run, capsys):
    """kill -9 during a checkpoint write leaves .checkpoint.pt.tmp<pid> (atomic_write's cleanup cannot
    run); the next start or resume removes it and says so, and the checkpoints are intact."""
    ckpt = run / "baseline" / "checkpoint.pt"
    before = ckpt.read_bytes()
    tmp = _killed_mid_write(ckpt)
    assert ckpt.read_bytes() == before
    assert _resume(base, run, 4) == 0
    out = capsys.readouterr().out
    assert not tmp.exists() and "removed 1 temp file(s) of an interrupted write" in out and tmp.name in out
    assert load_verified(ckpt, kind="checkpoint")["iteration"] == 4


def test_sweep_keeps_temp_files_of_live_writers_and_other_files(tmp_path):
    from kdkernels.train.checkpoint import sweep_stale_temp_files
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        keep = [tmp_path / f".checkpoint.pt.tmp{live.pid}", tmp_path / "checkpoint.pt", tmp_path / ".tmp123"]
        dead = [tmp_path / f".checkpoint.pt.tmp{os.getpid()}", _killed_mid_write(tmp_path / "metrics.json")]
        for p in keep + dead[:1]:
            p.write_bytes(b"x")
        assert sorted(sweep_stale_temp_files(tmp_path)) == sorted(dead)
        assert all(p.exists() for p in keep) and not any(p.exists() for p in dead)
    finally:
        live.kill()
        live.wait()
    assert sweep_stale_temp_files(tmp_path / "missing") == []


def test_signal_handlers_are_restored_after_training(base, data, tmp_path):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    trainer.train(_cfg(base, f"out_dir={tmp_path}", "train.iterations=1"), "baseline", progress=False)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_stop_request_inside_a_step_checkpoints_that_step(base, data, tmp_path, monkeypatch):
    """In-process: a SIGTERM raised during step 2 finishes that step, saves iteration 3, raises
    TrainingInterrupted (no model.pt: the run is not finished)."""
    def hook(mode, it):
        if it == 2:
            signal.raise_signal(signal.SIGTERM)
    monkeypatch.setattr(trainer, "_STEP_HOOK", hook)
    with pytest.raises(trainer.TrainingInterrupted) as exc:
        trainer.train(_cfg(base, f"out_dir={tmp_path}", "train.iterations=50", "train.ckpt_every=100"),
                      "baseline", progress=False)
    assert exc.value.signum == signal.SIGTERM and exc.value.iteration == 3
    assert exc.value.exit_code == 143 and exc.value.path == tmp_path / "baseline" / "checkpoint.pt"
    assert load_verified(exc.value.path, kind="checkpoint")["iteration"] == 3
    assert not (tmp_path / "baseline" / "model.pt").exists()


# ----------------------------------------------------------------------------- train/val categories
def _mismatched_data(data, tmp_path, change):
    root = tmp_path / "data"
    shutil.copytree(data, root)
    ann = root / "annotations" / "instances_val.json"
    d = json.loads(ann.read_text())
    if change == "name":
        d["categories"][1]["name"] = "box"
    else:
        d["categories"].append({"id": 99, "name": "star", "supercategory": "shape"})
    ann.write_text(json.dumps(d))
    return root


@pytest.mark.parametrize("change", ["name", "extra_id"])
def test_train_val_category_mismatch_is_a_clear_error(base, pristine, tmp_path, capsys, change):
    root = _mismatched_data(base / "data", tmp_path, change)
    train_ann, val_ann = root / "annotations" / "instances_train.json", root / "annotations" / "instances_val.json"
    for cmd in (["eval", "--which", "baseline"], ["teacher"]):
        rc = main([*cmd, *_args(base, f"data.root={root}", f"out_dir={pristine if cmd[0] == 'eval' else tmp_path}")])
        err = capsys.readouterr().err
        assert rc == 1 and str(train_ann) in err and str(val_ann) in err and "categor" in err, (cmd, err)
        assert ("box" in err) if change == "name" else ("99" in err), err
        _no_traceback(err)
    assert not (tmp_path / "teacher" / "checkpoint.pt").exists()  # refused before training


# ----------------------------------------------------------------------------- unreadable unlabeled images
def test_unreadable_unlabeled_image_fails_the_run_before_training(base, pristine, tmp_path, capsys, monkeypatch):
    steps = []
    monkeypatch.setattr(trainer, "_STEP_HOOK", lambda mode, it: steps.append(it))
    root = tmp_path / "data"
    shutil.copytree(base / "data", root)
    (root / "images" / "unlabeled" / "000001.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    rc = main(["distill", *_args(base, f"data.root={root}", f"out_dir={tmp_path / 'd'}",
                                 f"distill.teacher_checkpoint={pristine / 'baseline' / 'model.pt'}")])
    err = capsys.readouterr().err
    assert rc == 1 and "000001.png" in err and "1 unreadable" in err, err
    _no_traceback(err)
    assert steps == []  # found when the data set is built, not at its first unlabeled step


# ----------------------------------------------------------------------------- step bench backend
def test_step_bench_takes_its_backend_from_available_backends(base, data, tmp_path, monkeypatch):
    calls = []
    real = kdkernels.available_backends

    def spy(device):
        calls.append(str(device))
        return real(device)
    monkeypatch.setattr(kdkernels, "available_backends", spy)
    out = tmp_path / "bench.json"
    assert main(["step-bench", *_args(base, "train.device=cpu"), "--repeats", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert calls and calls[0] == "cpu"
    assert report["kdkernels_backend"] == real("cpu")[0]
    monkeypatch.setattr(kdkernels, "available_backends", lambda device: ["reference"])
    assert main(["step-bench", *_args(base, "train.device=cpu"), "--repeats", "1", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["kdkernels_backend"] == "reference"
