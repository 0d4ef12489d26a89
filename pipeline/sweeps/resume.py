"""Sweep resume: a sweep job whose configuration already has a FINISHED experiment run is skipped.

Running a sweep's command again after a crash, a preemption or failed jobs then runs only what is
missing: FAILED and KILLED runs (a process killed outright is marked FAILED by the orphan sweep)
do not count. `sweep.skip_finished=false` runs every job; single runs always run. The check comes
before TensorFlow and the data are loaded, so that a skipped job costs a store query.
"""

from __future__ import annotations

import math

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pipeline.config import TrackingConfig
from pipeline.provenance import config_hash
from pipeline.sweeps.job import in_sweep, sweep_run_id
from pipeline.tracking import open_tracker


def finished_objective(cfg: DictConfig) -> float | None:
    """In a sweep with sweep.skip_finished: the objective of this configuration's FINISHED run,
    announced in one line and noted on the sweep's run; None when the job has to run."""
    if not (in_sweep() and cfg.sweep.skip_finished):
        return None
    tracking: TrackingConfig = OmegaConf.to_object(cfg.tracking)
    digest = config_hash(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    with open_tracker(tracking) as tracker:
        finished = tracker.finished_experiment_run(digest)
        if finished is None:
            return None
        run_id, job = finished.parent.run_id, str(HydraConfig.get().job.num)
        sweep_run = sweep_run_id(tracking)
        if sweep_run is not None:
            tracker.record_skipped_job(sweep_run, job, run_id)
    # The job's whole output, as the summary table is a run's (Hydra's log lines may be off).
    print(
        f"skipped job {job}: config_hash {digest} already FINISHED as run {run_id} "
        "(sweep.skip_finished=false runs it again)"
    )
    return math.nan if finished.objective is None else finished.objective
