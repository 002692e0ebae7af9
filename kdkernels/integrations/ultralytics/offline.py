"""Offline mode: no network access from Ultralytics while the KD trainer runs.

What Ultralytics would reach for, and what this does about it:

- ``YOLO_OFFLINE=1`` (set by ``import kdkernels.integrations.ultralytics`` when unset, before
  Ultralytics is imported): ``ONLINE`` is False, so no usage events, no pip update check, no hub.
- fonts (``check_det_dataset`` and the plots call ``check_font``, which probes the download URL even
  with ``YOLO_OFFLINE=1``): only the local lookup (``~/.config/Ultralytics``, matplotlib's font list)
  is done; plots fall back to PIL's default font.
- the AMP check (``check_amp`` downloads ``yolo26n.pt`` to compare fp32 and AMP outputs on a GPU): it
  runs only when that file is already in ``SETTINGS["weights_dir"]``; otherwise it is skipped and the
  ``amp`` setting is kept (on CPU it still turns fp16 AMP off, as Ultralytics does; ``amp=bf16``
  needs no check).
- image decoding (Ultralytics patches ``PIL.Image.open`` to pip-install ``pi-heif`` at the first
  file PIL cannot identify): marked as done, so such a file is a plain PIL error.
- weights: models come from YAML (``model=yolo11n.yaml``); a ``.pt`` must be a local file.

``offline_mode()`` applies the last three for the duration of a ``with`` block and restores them.
"""
from __future__ import annotations

import contextlib
import importlib
import os

__all__ = ["offline_mode", "set_offline_env"]


def set_offline_env() -> None:
    """``YOLO_OFFLINE=1`` unless the variable is set (read by Ultralytics at import)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")


def _local_font(font="Arial.ttf"):
    """Ultralytics' check_font without the download: the local file or None."""
    from matplotlib import font_manager
    from ultralytics.utils import USER_CONFIG_DIR
    file = USER_CONFIG_DIR / os.path.basename(str(font))
    if file.exists():
        return file
    matches = [f.fname for f in font_manager.fontManager.ttflist if font in f.fname and os.path.exists(f.fname)]
    return matches[0] if matches else None


def _local_amp_check(model):
    """Ultralytics' check_amp when it needs no download (CPU/MPS: AMP off; reference weights local);
    else skipped, keeping AMP on."""
    from ultralytics.utils import LOGGER, WEIGHTS_DIR
    from ultralytics.utils import checks
    if next(model.parameters()).device.type in {"cpu", "mps"} or (WEIGHTS_DIR / "yolo26n.pt").is_file():
        return checks.check_amp(model)
    LOGGER.info("AMP: check skipped (offline: yolo26n.pt is not in weights_dir); keeping amp as set")
    return True


_PATCHES = (
    ("ultralytics.utils", "ONLINE", False),
    ("ultralytics.utils.checks", "ONLINE", False),
    ("ultralytics.utils.events", "ONLINE", False),
    ("ultralytics.data.utils", "check_font", _local_font),
    ("ultralytics.utils.plotting", "check_font", _local_font),
    ("ultralytics.engine.trainer", "check_amp", _local_amp_check),
    # PIL.Image.open patch: an undecodable image would trigger a pip install of pi-heif
    ("ultralytics.utils.patches", "_pil_plugins_registered", True),
)


@contextlib.contextmanager
def offline_mode(enabled: bool = True):
    """Within the block Ultralytics makes no network request (see the module docstring)."""
    if not enabled:
        yield
        return
    saved = []
    try:
        for module_name, attr, value in _PATCHES:
            module = importlib.import_module(module_name)
            saved.append((module, attr, getattr(module, attr)))
            setattr(module, attr, value)
        events = importlib.import_module("ultralytics.utils.events").events
        saved.append((events, "enabled", events.enabled))
        events.enabled = False
        yield
    finally:
        for obj, attr, value in reversed(saved):
            setattr(obj, attr, value)
