"""Secrets never reach MLflow params, tags or the logged config."""

from __future__ import annotations

import yaml
from omegaconf import OmegaConf

from pipeline.tracking import open_tracker
from pipeline.tracking.secrets import redact_text, redact_tree
from tests.conftest import compose_config, run_cli


def test_credentials_in_uris_and_secret_looking_keys_are_masked():
    tree = {
        "tracking": {"uri": "https://alice:s3cr3t@mlflow.example.org"},
        "dataset": {"api_token": "abc123", "name": "digits", "hf_password": None},
        "seed": 3,
    }
    safe = redact_tree(tree)
    assert safe["tracking"]["uri"] == "https://alice:***@mlflow.example.org"
    assert safe["dataset"] == {"api_token": "***", "name": "digits", "hf_password": None}
    assert safe["seed"] == 3
    assert redact_text("python -m pipeline tracking.uri=http://u:pw@h:5000") == (
        "python -m pipeline tracking.uri=http://u:***@h:5000"
    )


def test_logged_params_tags_and_config_artifact_carry_no_secret(store_uri, client):
    cfg = compose_config([f"tracking.uri={store_uri}"])
    resolved = {"tracking": {"uri": "https://alice:s3cr3t@host"}, "dataset": {"api_key": "k-123"}}
    tags = {"command": "python -m pipeline tracking.uri=https://alice:s3cr3t@host"}
    tracking = OmegaConf.to_object(cfg).tracking
    with open_tracker(tracking) as tracker, tracker.experiment_run("secret-test", tags) as run_id:
        tracker.log_config(resolved)
    run = client.get_run(run_id)
    logged = [*run.data.params.values(), *run.data.tags.values()]
    config_yaml = client.download_artifacts(run_id, "config.yaml")
    with open(config_yaml) as handle:
        text = handle.read()
    assert not any("s3cr3t" in v or "k-123" in v for v in logged)
    assert "s3cr3t" not in text and "k-123" not in text
    assert yaml.safe_load(text)["dataset"]["api_key"] == "***"
    assert run.data.params["tracking.uri"] == "https://alice:***@host"


def test_a_password_in_the_tracking_uri_shows_nowhere_the_command_writes(tmp_path):
    """Not on stderr (the unreachable-server line), not in Hydra's .hydra/ files."""
    uri = "http://alice:s3cr3t-pw@127.0.0.1:9"
    done = run_cli(["debug=smoke", f"tracking.uri={uri}"], tmp_path, timeout=120)
    assert done.returncode == 2
    assert "tracking.uri=http://alice:***@127.0.0.1:9 is unreachable" in done.stderr
    assert "s3cr3t-pw" not in done.stdout + done.stderr
    written = sorted((tmp_path / "out" / ".hydra").glob("*.yaml"))
    assert [p.name for p in written] == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    for path in written:
        assert "s3cr3t-pw" not in path.read_text(), path.name
    assert "alice:***@127.0.0.1" in (tmp_path / "out" / ".hydra" / "overrides.yaml").read_text()
