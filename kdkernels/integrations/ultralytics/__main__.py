"""``python -m kdkernels.integrations.ultralytics`` = ``kdkernels-yolo``."""
import sys

from .cli import main

sys.exit(main())
