"""Distill YOLO in Ultralytics with the kdkernels ops (``pip install kdkernels[ultralytics]``,
tested with ultralytics 8.4.190; CLI ``kdkernels-yolo``).

    from ultralytics import YOLO
    from kdkernels.integrations.ultralytics import KDDetectionTrainer
    YOLO("yolo11n.yaml").train(trainer=KDDetectionTrainer, data="data.yaml", distill_model="teacher.pt",
                               unlabeled="images/unlabeled", epochs=10, imgsz=64)

Importing this package sets ``YOLO_OFFLINE=1`` unless it is set (see :mod:`.offline`).
"""
from .offline import offline_mode, set_offline_env

set_offline_env()

from .config import KD_DEFAULTS, KDConfig, kd_config  # noqa: E402
from .data import coco_to_yolo, make_yolo_data  # noqa: E402
from .model import KDDistillationModel  # noqa: E402
from .trainer import KDDetectionTrainer  # noqa: E402

__all__ = ["KD_DEFAULTS", "KDConfig", "KDDetectionTrainer", "KDDistillationModel", "coco_to_yolo", "kd_config",
           "make_yolo_data", "offline_mode"]
