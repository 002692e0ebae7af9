"""Integrations of the kdkernels ops into other training frameworks (each an optional extra).

- :mod:`kdkernels.integrations.ultralytics`: YOLO distillation in Ultralytics
  (``pip install kdkernels[ultralytics]``, CLI ``kdkernels-yolo``).
"""
