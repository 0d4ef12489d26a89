"""The one interface the rest of the pipeline has to tracking.

Two implementations: `MlflowTracker` (pipeline/tracking/mlflow_tracker.py) and `NullTracker`
(pipeline/tracking/null.py, `tracking=off`). Code outside this package depends on this Protocol
only: it never imports mlflow, never reaches into a client, never branches on which tracker it has.

The run tree: `experiment_run` (the parent, one per invocation) holds `stage_run`s and a
`search_run`, which holds one trial run per trial (made by `trial_observer`). Runs are context
managers that end FINISHED, FAILED (with an `error` tag) or KILLED, never RUNNING. Everything
logged goes to the innermost open run. A tracker is itself a context manager: whoever opens it
closes it in the same `with`, and no thread or process it started outlives it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import keras

    from pipeline.config import SearchConfig
    from pipeline.pretrain import WeightsStore
    from pipeline.tracking.query import ExperimentRun, RunRecord
    from pipeline.tracking.trial_records import SearchOutcome, TrialObserver


@runtime_checkable
class Tracker(Protocol):
    """Where an invocation's runs, params, metrics, tags and artifacts go."""

    def __enter__(self) -> Tracker: ...

    def __exit__(self, *exc_info) -> None: ...

    # the run tree
    def experiment_run(
        self, name: str, tags: dict[str, str], sweep_run_id: str | None = None
    ) -> AbstractContextManager[str]:
        """The parent run of one invocation, nested under its sweep's run when there is one;
        yields its run id ("-" when not tracked)."""

    def stage_run(self, stage: str) -> AbstractContextManager[str]:
        """A child run of the parent, tagged `stage`; yields its run id."""

    def search_run(
        self, config_hash: str, previous: RunRecord | None
    ) -> AbstractContextManager[str]:
        """A `search` child run, or `previous` (an unfinished search) reopened; yields its id."""

    def trial_observer(self, search_run_id: str, cfg: SearchConfig) -> TrialObserver:
        """What gives each trial its own run under the search run."""

    # what goes into the innermost open run
    def callbacks(self, stage: str) -> list[keras.callbacks.Callback]:
        """Keras callbacks that log every epoch's metrics (step = epoch)."""

    def log_config(self, resolved: dict) -> None:
        """The resolved config: flattened params and `config.yaml`, secrets masked."""

    def log_params(self, params: dict[str, object]) -> None: ...

    def log_metrics(self, metrics: dict[str, float]) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...

    def log_artifact(self, path: Path) -> None: ...

    def log_learning_curve(
        self, history: dict[str, list[float]], stage: str, best_epoch: int
    ) -> None: ...

    def log_search_outcome(self, outcome: SearchOutcome, objective: str) -> None:
        """trials.csv, the objective plot, counts of trials, the best trial."""

    # reading back what earlier invocations wrote
    def weights_store(self) -> WeightsStore:
        """Where pretrained in-house backbones are kept and found again by recipe."""

    def resumable_search(self, config_hash: str) -> RunRecord | None:
        """An unfinished search of this configuration to continue, if any."""

    def chief_search(self, config_hash: str, address: str, wait_s: float) -> RunRecord:
        """A distributed worker's search run: the chief's, waited for up to `wait_s`."""

    def fetch_artifact(self, run_id: str, path: str, destination: Path) -> Path:
        """Download one artifact file of a run into `destination`, whole or not at all (a
        process reading that path never sees a partial file); its local path."""

    # sweeps
    def finished_experiment_run(self, config_hash: str) -> ExperimentRun | None:
        """The latest FINISHED experiment run of this configuration: a sweep job skips on it."""

    def record_skipped_job(self, sweep_run_id: str, job: str, run_id: str) -> None:
        """Note on a sweep's run that its job `job` was skipped for the finished run `run_id`."""

    # the summary
    def run_ids(self) -> dict[str, str]:
        """Run ids of this invocation: `parent` and each stage."""

    def ui_command(self) -> str:
        """How to look at the runs."""
