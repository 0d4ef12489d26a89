"""What a search produces and who watches it, in plain values: no Keras Tuner, no MLflow.

The search (pipeline/search/tuner.py, the only keras_tuner importer) fills these; tracking
(pipeline/tracking/) reads them. Keeping them here lets either side change without the other.
They live in tracking, beside the Tracker Protocol, because tracking implements the observer and
the search sits above tracking: the search imports this module, tracking never imports the search.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import keras

HYPERPARAMETERS = ("unfreeze_blocks", "learning_rate")  # = config keys = MLflow param names
CHECKPOINT = "feature_extraction.weights.h5"  # every trial starts from it; a search run artifact


@dataclass(frozen=True)
class TrialRecord:
    """One trial, in plain values: what it tried and how it ended."""

    trial_id: str
    status: str  # keras-tuner's: COMPLETED | FAILED | INVALID | RUNNING
    values: dict[str, object]
    score: float | None
    best_step: int | None
    message: str | None  # the traceback of a failed trial

    @property
    def error(self) -> str | None:
        """The last line of the traceback: `ExceptionType: message`."""
        lines = [line for line in (self.message or "").splitlines() if line.strip()]
        return lines[-1].strip() if lines else None


@dataclass(frozen=True)
class SearchOutcome:
    best: TrialRecord | None  # None: no trial completed
    trials: list[TrialRecord]
    directory: Path


class TrialObserver(Protocol):
    """Watches trials (tracking lives behind it); all methods are called in the trial's process."""

    def trial_started(self, trial_id: str, values: dict[str, object]) -> None: ...

    def callbacks(self, trial_id: str, execution: int) -> list[keras.callbacks.Callback]: ...

    def trial_ended(self, record: TrialRecord) -> None: ...

    def interrupted(self, error: BaseException) -> None: ...


class NullObserver:
    """Nobody watching: tracking off."""

    def trial_started(self, trial_id: str, values: dict[str, object]) -> None: ...

    def callbacks(self, trial_id: str, execution: int) -> list[keras.callbacks.Callback]:
        return []

    def trial_ended(self, record: TrialRecord) -> None: ...

    def interrupted(self, error: BaseException) -> None: ...
