"""Transfer Lab: scratch vs. feature extraction vs. fine-tuning, via Hydra, tracked in MLflow."""

from pathlib import Path

# The project root holds conf/ and mlruns/; the default MLflow store lives there whatever the cwd.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
