"""Checkpoint and model files that are written atomically and verified when read.

A file is ``torch.save({"format": FORMAT, "kind": kind, "sha256": hex, "payload": bytes})`` where
``payload`` is the ``torch.save`` bytes of the saved dict and ``sha256`` their checksum, so a bit
flip, a truncated or an empty file is caught on load (``CheckpointError`` naming the file) instead
of resuming from damaged weights. ``torch.load(path)`` still opens the file (the wrapper).

Every write goes to a temp file in the same folder, is fsynced, and then renamed over the target
(``os.replace``), so a crash leaves either the old or the new file, never half of one.
``save_checkpoint`` also keeps the previous good checkpoint (``previous_path``: checkpoint.pt →
checkpoint.prev.pt), and ``load_latest`` falls back to it when the newest is missing or damaged.
Files written before checksums existed (a plain ``torch.save`` dict) still load, unverified.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

import torch

FORMAT = "kdkernels.train/1"
KINDS = {"checkpoint": "training checkpoint", "model": "model file"}


class CheckpointError(ValueError):
    """A checkpoint or model file that cannot be used; the message names the file and why."""


# ----------------------------------------------------------------------------- atomic writes
def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (not supported everywhere: then the rename alone)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path(path: Path) -> Path:
    """The temp file `atomic_write` writes before the rename: <folder>/.<name>.tmp<pid>."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp(?P<pid>[0-9]+)$")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # exists, owned by someone else
        return True
    return True


def sweep_stale_temp_files(folder) -> list:
    """Remove the temp files of `atomic_write`s that never finished (a `kill -9` or power loss
    between the write and the rename) from `folder`; returns the removed paths.

    A temp file is stale when the process that wrote it (the pid in its name) no longer runs, or
    is this process (whose own writes are not in flight while this runs). Temp files of other live
    processes are kept: they may be writing now. The files they were to replace are untouched."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in sorted(folder.iterdir()):
        m = _TEMP_NAME.match(p.name)
        if not m or not p.is_file():
            continue
        pid = int(m["pid"])
        if pid != os.getpid() and _process_alive(pid):
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def atomic_write(path, write, *, before_replace=None) -> None:
    """`write(tmp_path)` writes the content; the temp file is fsynced and renamed over `path`
    (`before_replace()` runs just before the rename). On any failure (or interruption) the temp
    file is removed and `path` is untouched. A `kill -9` cannot run that cleanup: its temp file
    stays until `sweep_stale_temp_files` (the trainer calls it on every start and resume)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_save(obj, path) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename: a crash never leaves half a file."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(text: str, path) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


# ----------------------------------------------------------------------------- verified files
def save_verified(obj: dict, path, *, kind: str, before_replace=None) -> None:
    """Atomically write `obj` with its sha256 checksum; `kind` is "checkpoint" or "model"."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    wrapper = {"format": FORMAT, "kind": kind, "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}
    atomic_write(path, lambda tmp: torch.save(wrapper, tmp), before_replace=before_replace)


def _first_line(exc: BaseException) -> str:
    """A short reason: the exception's type and its first line (torch's weights-only boilerplate,
    which suggests weights_only=False, left out)."""
    text = str(exc).strip().splitlines()
    first = text[0].split(". ")[0][:160] if text else ""
    if not first or first.startswith("Weights only load failed"):
        return type(exc).__name__
    return f"{type(exc).__name__}: {first}"


def _torch_load(source, path: Path, what: str):
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, pickle, EOF, unicode, ... errors: all mean a damaged or foreign file
        raise CheckpointError(f"{what} {path} is not a readable kdkernels-train file (corrupt, truncated "
                              f"or another format): {_first_line(exc)}") from None


def _unwrap(wrapper: dict, path: Path, kind: str, what: str, decode: bool = True) -> dict | None:
    """The payload of a checksummed file, verified (decode=False: verify only, return None);
    CheckpointError naming the file otherwise."""
    if wrapper.get("kind") != kind:
        found = KINDS.get(wrapper.get("kind"), repr(wrapper.get("kind")))
        raise CheckpointError(f"{what} {path} is a {found}, not a {KINDS[kind]}")
    payload, digest = wrapper.get("payload"), wrapper.get("sha256")
    if not isinstance(payload, bytes) or not isinstance(digest, str):
        raise CheckpointError(f"{what} {path} is corrupt: its payload or checksum is missing")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(f"{what} {path} is corrupt: its sha256 checksum does not match its content "
                              f"(damaged after it was written)")
    if not decode:
        return None
    state = _torch_load(io.BytesIO(payload), path, what)
    if not isinstance(state, dict):
        raise CheckpointError(f"{what} {path} is corrupt: its payload is not a dict")
    return state


def _check_legacy(state: dict, path: Path, kind: str, what: str) -> dict:
    """A file from before checksums: accepted when it has the kind's keys."""
    if kind == "checkpoint" and "module" in state and "iteration" in state:
        return state
    if kind == "model" and "model" in state:
        return state
    if kind == "model" and "module" in state:
        raise CheckpointError(f"{what} {path} is a training checkpoint, not a model file "
                              f"(use the stage's model.pt)")
    if kind == "checkpoint" and "model" in state:
        raise CheckpointError(f"{what} {path} is a model file, not a training checkpoint")
    raise CheckpointError(f"{what} {path} is not a kdkernels-train {KINDS[kind]} "
                          f"(keys: {', '.join(map(str, list(state)[:8]))})")


def load_verified(path, *, kind: str, what: str | None = None, decode: bool = True) -> dict | None:
    """The dict saved by `save_verified(obj, path, kind=kind)`, checksum verified.

    FileNotFoundError when there is no file; CheckpointError (a ValueError) naming the file when it
    is damaged (checksum mismatch, truncated, garbage), of another kind, or not ours at all.
    `what` names the file's role in messages (default: "checkpoint" / "model file"). decode=False
    only verifies (returns None for a checksummed file)."""
    path = Path(path)
    what = what or ("checkpoint" if kind == "checkpoint" else "model file")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{what} {path} cannot be read: {_first_line(exc)}") from None
    obj = _torch_load(io.BytesIO(raw), path, what)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return _unwrap(obj, path, kind, what, decode)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} {path} is not a kdkernels-train {KINDS[kind]} "
                              f"(it holds a {type(obj).__name__})")
    return _check_legacy(obj, path, kind, what)


def is_verified(path, kind: str = "checkpoint") -> bool:
    """Whether `path` is an intact file of `kind` (the checksum is checked, the payload not unpickled)."""
    try:
        load_verified(path, kind=kind, decode=False)
    except (OSError, CheckpointError):
        return False
    return True


# ----------------------------------------------------------------------------- the checkpoint pair
def previous_path(path) -> Path:
    """Where the previous good checkpoint is kept: checkpoint.pt → checkpoint.prev.pt."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(state: dict, path) -> None:
    """Write `state` as the newest checkpoint; the current one becomes the previous one if it is good
    (a damaged one is overwritten instead, so the previous good one survives)."""
    path = Path(path)

    def keep_previous():  # after the new file is written and fsynced: the window without `path` is one rename
        if path.is_file() and is_verified(path):
            os.replace(path, previous_path(path))
    save_verified(state, path, kind="checkpoint", before_replace=keep_previous)


def load_latest(path, log=print):
    """(state, file) of the newest usable checkpoint: `path`, else `previous_path(path)` (saying so
    through `log`); (None, None) when neither exists. CheckpointError naming every damaged file when
    files exist but none is usable."""
    path = Path(path)
    problems = []
    for candidate in (path, previous_path(path)):
        if not candidate.is_file():
            continue
        try:
            state = load_verified(candidate, kind="checkpoint")
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        if candidate != path:
            why = "; ".join(problems) if problems else f"{path} is missing"
            log(f"{why}: falling back to the previous checkpoint {candidate} (iteration {state.get('iteration')})")
        return state, candidate
    if problems:
        raise CheckpointError("no usable checkpoint to resume from: " + "; ".join(problems)
                              + " (remove the damaged files, or run without --resume, to start over)")
    return None, None
