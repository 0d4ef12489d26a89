"""Transfer Lab: scratch vs. feature extraction vs. fine-tuning, via Hydra, tracked in MLflow."""

import os
from pathlib import Path

# The project root holds conf/ and mlruns/; the default MLflow store lives there whatever the cwd.
PROJECT_ROOT = Path(__file__).resolve().parents[1]

# TensorFlow's C++ start-up chatter hides the progress bars; warnings and errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
