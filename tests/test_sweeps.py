"""Sweeps: the same sweep command again runs only what is missing; a sweep is one run in MLflow."""

from __future__ import annotations

from omegaconf import OmegaConf

from pipeline.preflight import check_composition
from pipeline.provenance import config_hash, variant_hash
from tests.conftest import compose_config


def resolved(overrides: list[str]) -> dict:
    return OmegaConf.to_container(compose_config(overrides), resolve=True, enum_to_str=True)


def test_sweep_keys_change_neither_config_hash_nor_variant_hash():
    base, other = resolved([]), resolved(["sweep.skip_finished=false"])
    assert base["sweep"] != other["sweep"]
    assert config_hash(base) == config_hash(other)
    assert variant_hash(base) == variant_hash(other)
    assert config_hash(resolved(["seed=1"])) != config_hash(base)


def test_a_wrong_sweep_value_is_one_line_naming_it():
    problem = check_composition(["-m", "seed=0,1", "sweep.skip_finished=maybe"])
    assert problem == "sweep.skip_finished: Value 'maybe' is not a valid bool (type str)"
    assert check_composition(["-m", "sweep.skip=1"]).startswith("sweep.skip is not a config key")
