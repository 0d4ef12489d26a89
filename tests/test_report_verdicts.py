"""The report says what is settled and what is not: anytime-valid verdicts per comparison, the
further seeds and the sweep command for an open one, over a real store of hand-made runs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.report import __main__ as report_cli
from pipeline.report.power import seeds_for_power
from pipeline.report.sequential import METHOD
from tests.test_report_scale import log_run

STAGES = ("scratch", "feature_extraction", "fine_tune")
SWEEP_COMMAND = "python -m pipeline -m hydra/sweeper=sequential"


def log_study(client, name: str, gains: dict, seeds: int, variants=(None,), sweep_tags=None):
    """An experiment `name`: one sweep run, `seeds` experiment runs per variant (param
    `lr.fine_tune`), each with three stage runs: scratch's test accuracy 0.8 + noise, the others
    that plus gains[stage] + a little noise of their own (0 when the gain is exact)."""
    experiment_id = client.create_experiment(name)
    sweep = log_run(client, experiment_id, "sweep", {"stage": "sweep", **(sweep_tags or {})})
    rng = random.Random(name)
    for lr in variants:
        params = {} if lr is None else {"lr.fine_tune": lr}
        for seed in range(seeds):
            tags = {"config_hash": f"{lr}{seed}", "variant_hash": f"v{lr}", "seed": str(seed)}
            tags |= {"dataset": "digits", "backbone": "small_cnn"}
            parent = log_run(client, experiment_id, "run", tags, params, parent=sweep)
            base = 0.8 + rng.gauss(0, 0.02)
            for stage in STAGES:
                gain, noise = gains.get(stage, (0.0, 0.0))
                accuracy = base + gain + (rng.gauss(0, noise) if noise else 0.0)
                metrics = [("test_accuracy", accuracy, 0), ("best_val_accuracy", 0.9, 0)]
                log_run(client, experiment_id, stage, {"stage": stage}, {}, metrics, parent)


@pytest.fixture(scope="module")
def store(tmp_path_factory, migrated_store: Path) -> str:
    db = tmp_path_factory.mktemp("verdicts") / "mlflow.db"
    db.write_bytes(migrated_store.read_bytes())
    uri = f"sqlite:///{db}"
    client = MlflowClient(uri)
    sequential = {"sequential": "true", "sequential.alpha": "0.1", "sequential.margin": "0.02"}
    sequential["sequential.min_seeds"] = "4"
    clear = {"feature_extraction": (0.05, 0.003), "fine_tune": (0.08, 0.003)}
    log_study(client, "settles", clear, 10, sweep_tags=sequential)
    log_study(client, "negligible", {}, 6)
    log_study(client, "short", {"feature_extraction": (0.02, 0.01), "fine_tune": (0.03, 0.01)}, 3,
              variants=("0.001", "0.01"))  # fmt: skip
    return uri


def report(store: str, out: Path, experiment: str, *extra: str) -> tuple[dict, str]:
    arguments = [f"tracking_uri={store}", f"experiment_name={experiment}", f"out={out}"]
    code = report_cli.main([*arguments, "log_to_mlflow=false", "variant_figures=0", *extra])
    assert code == 0
    return json.loads((out / "report.json").read_text()), (out / "report.md").read_text()


def verdicts(data: dict) -> list[list[str]]:
    return [[g["verdict"] for g in v["gains"]] for v in data["variants"]]


def test_clear_gains_settle_positive_with_the_sweeps_settings(store, tmp_path):
    data, markdown = report(store, tmp_path, "settles")
    assert verdicts(data) == [["positive", "positive", "positive"]]
    settings = data["verdict_settings"]
    assert (settings["alpha"], settings["margin"], settings["min_seeds"]) == (0.1, 0.02, 4)
    assert settings["source"].startswith("sweep ") and settings["method"] == METHOD
    for gain in data["variants"][0]["gains"]:
        assert 0 < gain["anytime_low"] < gain["mean"] < gain["anytime_high"]
        assert gain["further_seeds"] is None and gain["further_command"] is None
        assert gain["t_low"] is not None and gain["p_holm"] is not None  # the old keys stay
    assert "fine_tune - scratch: positive (anytime-valid, alpha=0.1, margin=0.02" in markdown
    assert METHOD in markdown and "| verdict | anytime-valid CI | further seeds |" in markdown
    html = (tmp_path / "report.html").read_text()
    assert html.index('class="settled"') < html.index("<h2>Summary</h2>")
    assert "anytime-valid CI" in (tmp_path / "table.tex").read_text()


def test_options_override_the_sweeps_settings(store, tmp_path):
    data, markdown = report(store, tmp_path, "settles", "alpha=0.01", "min_seeds=20")
    assert verdicts(data) == [["open", "open", "open"]]  # 10 seeds < min_seeds
    settings = data["verdict_settings"]
    assert (settings["alpha"], settings["margin"], settings["min_seeds"]) == (0.01, 0.02, 20)
    assert settings["source"].startswith("options+sweep ")
    command = data["variants"][0]["gains"][0]["further_command"]
    assert "hydra.sweeper.alpha=0.01" in command and "hydra.sweeper.min_seeds=20" in command
    assert "min_seeds=20, from options+sweep " in markdown  # the methods paragraph says so


def test_equal_stages_are_negligible(store, tmp_path):
    data, markdown = report(store, tmp_path, "negligible")
    assert verdicts(data) == [["negligible"] * 3]
    assert data["verdict_settings"]["source"] == "defaults"  # the sweep run is not sequential
    gain = data["variants"][0]["gains"][0]
    assert -0.01 < gain["anytime_low"] <= 0 <= gain["anytime_high"] < 0.01
    assert "feature_extraction - scratch: negligible (anytime-valid, alpha=0.05" in markdown


def test_a_short_study_is_open_with_the_seeds_and_command_that_would_settle_it(store, tmp_path):
    data, markdown = report(store, tmp_path, "short")
    assert verdicts(data) == [["open"] * 3] * 2
    for variant in data["variants"]:
        lr = variant["settings"]["lr.fine_tune"]
        gain = variant["gains"][1]  # fine_tune - scratch
        assert gain["anytime_low"] is None and gain["anytime_high"] is None  # 3 < min_seeds
        # at least up to min_seeds, and the power simulation's answer for these differences
        assert gain["further_seeds"] >= 5 - 3
        assert gain["further_seeds"] == seeds_for_power(gain["differences"], 0.05, 0.01)
        total = 3 + gain["further_seeds"]
        expected = f"{SWEEP_COMMAND} lr.fine_tune={lr} hydra.sweeper.max_seeds={total}"
        assert gain["further_command"] == expected
        assert f"fine_tune - scratch is open: {gain['further_seeds']} further seeds" in markdown
        assert f"`{expected}`" in markdown
    line = "fine_tune - scratch: positive in 0, negative in 0, negligible in 0, open in 2 of 2"
    assert line in markdown


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("alpha=0.7", "alpha=0.7 but it must lie in (0, 0.5)"),
        ("margin=-1", "margin=-1.0 but it must lie in [0, 1)"),
        ("min_seeds=1", "min_seeds=1 but it must be >= 2"),
        ("alpha=much", "alpha: Value 'much' of type 'str' could not be converted to Float"),
    ],
)
def test_bad_verdict_options_exit_2_in_one_line_with_nothing_written(
    store, tmp_path, capsys, option, message
):
    arguments = [f"tracking_uri={store}", "experiment_name=settles", f"out={tmp_path / 'r'}"]
    assert report_cli.main([*arguments, option]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and message in error and "\n" not in error
    assert not (tmp_path / "r").exists()
    client = MlflowClient(store)
    experiment_id = client.get_experiment_by_name("settles").experiment_id
    assert not client.search_runs([experiment_id], "tags.stage = 'report'")
