"""Transfer Lab: scratch vs. feature extraction vs. fine-tuning, via Hydra, tracked in MLflow."""

import sys

if sys.argv[:1] == ["-m"]:  # `python -m ...` is locating its module (pipeline/cli/startup.py)
    from pipeline.cli import startup

    if startup.module_python_m_is_locating() in startup.COMMANDS:
        startup.hold_interrupts()  # before any other import (pipeline/__main__.py says why)

from pathlib import Path

# The project root holds conf/ and mlruns/; the default MLflow store lives there whatever the cwd.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
