"""The sequential sweeper: for every variant (the cartesian product of the swept overrides) it runs
seeds first_seed, first_seed + 1, ... in batches through the configured launcher, and after every
batch reads each variant's FINISHED runs from the store and decides its comparisons; a variant
whose comparisons are all settled stops, the sweep stops when all have or at max_seeds.

Seeds already FINISHED in the store count, whichever sweep ran them, matched by the config_hash of
the seed's job (composed as the launcher will compose it, hashed as sweeps/resume.py hashes it):
the same command again, after Ctrl-C or kill -9, runs only what is missing. Only the seeds asked
for are read, in seed order, so which results count never depends on the results.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from pipeline.config import TrackingConfig
from pipeline.errors import ConfigError
from pipeline.provenance import config_hash, variant_hash
from pipeline.sweeps.job import sweep_run_in
from pipeline.sweeps.sequential.study import VariantStudy, verdict_record
from pipeline.sweeps.sequential_options import check_options, check_variant, options_of

log = logging.getLogger(__name__)


def variant_overrides(arguments: list[str], parser: OverridesParser) -> list[list[str]]:
    """One override list per variant: every discrete sweep expanded, in command-line order."""
    choices = []
    for override in parser.parse_overrides(arguments):
        key = override.get_key_element()
        if not override.is_sweep_override():
            choices.append([f"{key}={override.get_value_element_as_str()}"])
        elif override.is_discrete_sweep():
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            raise ConfigError(
                f"{override.input_line}: hydra/sweeper=sequential sweeps lists of values "
                "(a,b or choice(a,b)), not ranges of numbers to search"
            )
    return [list(product) for product in itertools.product(*choices)]


class SequentialSweeper(Sweeper):
    """Hydra's Sweeper for hydra/sweeper=sequential (conf/hydra/sweeper/sequential.yaml)."""

    def __init__(self, **options: Any) -> None:
        self.options = options_of(options)
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def job_config(self, overrides: list[str]) -> dict:
        """A job's config as its task function gets it (Hydra's node removed), resolved."""
        loader = self.hydra_context.config_loader
        cfg = loader.load_sweep_config(master_config=self.config, sweep_overrides=overrides)
        with open_dict(cfg):
            del cfg["hydra"]
        return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)

    def seed_configs(self, overrides: list[str], seeds: list[int]) -> dict[int, dict]:
        """Each seed's job config. A composition takes ~0.2 s: when the first two seeds' configs
        differ only in `seed` (nothing else interpolates it), the others are derived from them."""
        first = {seed: self.job_config([*overrides, f"seed={seed}"]) for seed in seeds[:2]}
        base = first[seeds[0]]
        if len(seeds) < 2 or first[seeds[1]] != {**base, "seed": seeds[1]}:
            return {seed: self.job_config([*overrides, f"seed={seed}"]) for seed in seeds}
        return {seed: {**base, "seed": seed} for seed in seeds}

    def study(self, index: int, overrides: list[str]) -> VariantStudy:
        """A variant with the config_hash of each seed it may run."""
        first = self.options.first_seed
        seeds = range(first, first + self.options.max_seeds)
        resolved = self.seed_configs(overrides, list(seeds))
        some = resolved[first]
        check_variant(self.options, list(some["stages"]), bool(some["tracking"]["enabled"]))
        schema = OmegaConf.structured(TrackingConfig)
        tracking = OmegaConf.to_object(OmegaConf.merge(schema, some["tracking"]))
        return VariantStudy(
            index=index,
            overrides=overrides,
            tracking=tracking,
            variant_hash=variant_hash(some),
            hashes={seed: config_hash(config) for seed, config in resolved.items()},
        )

    def sweep(self, arguments: list[str]) -> list[list[JobReturn]]:
        """Batches of jobs until every variant is settled or has run max_seeds seeds."""
        check_options(self.options, arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        studies = [self.study(i, v) for i, v in enumerate(variant_overrides(arguments, parser))]
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns: list[list[JobReturn]] = []
        job_index = 0
        rounds = self.options.max_seeds // self.options.batch_size + 2  # bounded, whatever happens
        for look in range(rounds):
            self.look(studies, look, sweep_dir)
            batch = [
                [*study.overrides, f"seed={seed}"]
                for study in studies
                for seed in study.next_seeds(self.options.batch_size)
            ]
            if not batch:
                break
            for study in studies:
                study.launched.update(study.next_seeds(self.options.batch_size))
            results = self.launcher.launch(batch, initial_job_idx=job_index)
            for result in results:
                _ = result.return_value  # raises a failed job's error, as Hydra's BasicSweeper
            job_index += len(batch)
            returns.append(list(results))
        return returns

    def look(self, studies: list[VariantStudy], look: int, sweep_dir: Path) -> None:
        """Read the finished runs, decide every variant, log a line each, tag the sweep run."""
        from pipeline.tracking.sweeps import SKIPPED_JOB, finished_stage_values, record_verdicts

        by_store: dict[str, list[VariantStudy]] = {}
        for study in studies:
            by_store.setdefault(repr(study.tracking), []).append(study)
        for group in by_store.values():
            hashes = [study.variant_hash for study in group]
            found = finished_stage_values(group[0].tracking, hashes, self.options.metric)
            for study in group:
                runs = found.get(study.variant_hash, {})
                values = {digest: stages for digest, (_, stages) in runs.items()}
                ids = {digest: run_id for digest, (run_id, _) in runs.items()}
                study.update(values, self.options, ids)
        for study in studies:
            log.info("look %d: %s", look, study.summary())
        tracking = studies[0].tracking
        run_id = sweep_run_in(sweep_dir, tracking)
        if run_id is not None:
            tags, metrics = verdict_record(studies, self.options)
            for study in studies:  # what the store held already counts: named as sweeps.py does
                for seed, counted in study.counted.items():
                    tags[f"{SKIPPED_JOB}{study.index}.seed{seed}"] = counted
            record_verdicts(tracking, run_id, tags, metrics, look)
