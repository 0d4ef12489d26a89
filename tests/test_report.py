"""Reports and reproduction over a real smoke study: three seeds and one failed run, real store."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from scipy import stats

from pipeline import PROJECT_ROOT, experiment
from pipeline.cli.process import configured
from pipeline.experiment import run_experiment
from pipeline.report import __main__ as report_cli
from pipeline.report.statistics import expected_max, holm, paired_gain, summarize
from pipeline.reproduce import main as reproduce_main
from tests.conftest import compose_config, copy_store, headless

SEEDS = (0, 1, 2)
EXPERIMENT = "transfer-lab"


def smoke_run(uri: str, seed: int) -> None:
    cfg = compose_config(["debug=smoke", f"tracking.uri={uri}", f"seed={seed}"])
    with configured(cfg):
        run_experiment(cfg)


@pytest.fixture(scope="module")
def study(tmp_path_factory, smoke_backbone_store) -> str:
    """A store holding three finished seeds of the smoke experiment and one FAILED invocation."""
    db = tmp_path_factory.mktemp("study") / "mlruns" / "mlflow.db"
    uri = copy_store(smoke_backbone_store, db)
    for seed in SEEDS:
        smoke_run(uri, seed)

    def broken(*args, **kwargs):
        raise RuntimeError("stage broke")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(experiment, "log_stage", broken)
        with pytest.raises(RuntimeError):
            smoke_run(uri, 3)
    return uri


def seed_of(run) -> int:
    """A parent run's seed, or (tagged by `samples`) the seed of a stage run's parent."""
    return int(run.data.tags["seed"])


def samples(client: MlflowClient) -> tuple[list, dict[str, list]]:
    """Straight from the store: the parent runs that are samples, and the stage runs of the
    FINISHED ones (tagged with their parent's seed)."""
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = client.search_runs([experiment_id], max_results=1000)
    parents = [
        r
        for r in runs
        if "config_hash" in r.data.tags
        and "mlflow.parentRunId" not in r.data.tags
        and "reproduces" not in r.data.tags
    ]
    finished = {r.info.run_id: r for r in parents if r.info.status == "FINISHED"}
    stages: dict[str, list] = {}
    for run in runs:
        parent = finished.get(run.data.tags.get("mlflow.parentRunId", ""))
        if parent is not None and "stage" in run.data.tags:
            run.data.tags["seed"] = parent.data.tags["seed"]
            stages.setdefault(run.data.tags["stage"], []).append(run)
    return parents, stages


def write(uri: str, out: Path, *extra: str) -> int:
    return report_cli.main([f"tracking_uri={uri}", f"out={out}", *extra])


@pytest.mark.slow
def test_report_numbers_are_the_stores(study, tmp_path, capsys):
    assert write(study, tmp_path / "report") == 0
    assert str(tmp_path / "report") in capsys.readouterr().out
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    client = MlflowClient(study)
    parents, stages = samples(client)

    failed = [r for r in parents if r.info.status == "FAILED"]
    assert [(e["run_id"], e["status"]) for e in report["excluded"]] == [
        (failed[0].info.run_id, "FAILED")
    ]
    assert "stage broke" in report["excluded"][0]["error"]
    [variant] = report["variants"]
    assert variant["seeds"] == list(SEEDS) and variant["warning"] == ""
    assert set(stages) == {"scratch", "feature_extraction", "fine_tune"}
    for stage, runs in stages.items():
        runs = sorted(runs, key=lambda r: seed_of(r))
        for metric in ("test_accuracy", "best_val_accuracy"):
            values = np.array([r.data.metrics[metric] for r in runs])
            summary = variant["stages"][stage][metric]
            assert summary["run_ids"] == [r.info.run_id for r in runs]
            assert summary["n"] == 3
            assert summary["mean"] == pytest.approx(values.mean(), abs=1e-12)
            assert summary["std"] == pytest.approx(values.std(ddof=1), abs=1e-12)
            assert summary["min"] == values.min() and summary["max"] == values.max()
            if values.std() > 0:
                low, high = stats.t.interval(0.95, 2, loc=values.mean(), scale=stats.sem(values))
                assert (summary["ci_low"], summary["ci_high"]) == pytest.approx((low, high))

    test_accuracy = {
        stage: {seed_of(r): r.data.metrics["test_accuracy"] for r in runs}
        for stage, runs in stages.items()
    }
    assert [(g["first"], g["second"]) for g in variant["gains"]] == [
        ("feature_extraction", "scratch"),
        ("fine_tune", "scratch"),
        ("fine_tune", "feature_extraction"),
    ]
    for gain in variant["gains"]:
        first, second = test_accuracy[gain["first"]], test_accuracy[gain["second"]]
        assert gain["differences"] == pytest.approx([first[s] - second[s] for s in SEEDS])

    report_runs = client.search_runs(
        [client.get_experiment_by_name(EXPERIMENT).experiment_id], "tags.stage = 'report'"
    )
    assert len(report_runs) == 1 and report_runs[0].info.status == "FINISHED"
    logged = {a.path for a in client.list_artifacts(report_runs[0].info.run_id, "report")}
    assert {"report/report.html", "report/report.md", "report/table.tex"} <= logged
    assert "report/report.json" in logged


def test_intervals_equal_scipys_on_hand_made_inputs():
    values = [0.81, 0.86, 0.9, 0.74, 0.88]
    summary = summarize(values)
    low, high = stats.t.interval(0.95, 4, loc=np.mean(values), scale=stats.sem(values))
    assert (summary.ci_low, summary.ci_high) == pytest.approx((low, high), abs=1e-12)
    assert summary.std == pytest.approx(np.std(values, ddof=1))

    pairs = {0: (0.9, 0.7), 1: (0.85, 0.8), 2: (0.95, 0.6), 3: (0.8, 0.82), 4: (0.9, 0.75)}
    differences = np.array([a - b for a, b in pairs.values()])
    gain = paired_gain("fine_tune", "scratch", pairs)
    bca = stats.bootstrap(
        (differences,), np.mean, n_resamples=9999, method="BCa", random_state=0
    ).confidence_interval
    assert (gain.bca_low, gain.bca_high) == pytest.approx((bca.low, bca.high), abs=1e-12)
    t_low, t_high = stats.t.interval(0.95, 4, loc=differences.mean(), scale=stats.sem(differences))
    assert (gain.t_low, gain.t_high) == pytest.approx((t_low, t_high), abs=1e-12)
    # every one of the 2^5 sign flips, counted by hand
    flipped = [abs(np.mean(differences * s)) for s in itertools.product((1, -1), repeat=5)]
    extreme = sum(m >= abs(differences.mean()) - 1e-12 for m in flipped)
    assert gain.p_value == pytest.approx(extreme / 32)
    assert gain.wins == 0.8

    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    # best of two draws from {0.1, 0.2, 0.3}: P(0.1) = 1/9, P(0.2) = 3/9, P(0.3) = 5/9
    mean, variance = expected_max([0.3, 0.1, 0.2], 2)
    assert mean == pytest.approx(2.2 / 9)
    assert variance == pytest.approx((0.01 + 3 * 0.04 + 5 * 0.09) / 9 - (2.2 / 9) ** 2)


def test_rendering_twice_differs_only_in_the_generated_line(study, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert write(study, first, "log_to_mlflow=false") == 0
    assert write(study, second, "log_to_mlflow=false") == 0
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert {"report.html", "report.md", "report.json", "table.tex"} <= set(names)
    assert any(name.endswith(".png") for name in names)
    for name in names:
        a, b = (first / name).read_bytes(), (second / name).read_bytes()
        if a == b:
            continue
        differing = [(x, y) for x, y in zip(a.splitlines(), b.splitlines(), strict=True) if x != y]
        assert len(differing) == 1 and b"generated" in differing[0][0], name


def test_the_html_renders_in_headless_chromium(study, tmp_path):
    folder = tmp_path / "report"
    assert write(study, folder, "log_to_mlflow=false") == 0
    html = (folder / "report.html").read_text()
    assert "http://" not in html and "https://" not in html  # self-contained
    assert html.count('src="data:image/png;base64,') >= 3
    screenshot = tmp_path / "screenshot.png"
    browser = headless(
        (folder / "report.html").as_uri(),
        tmp_path / "profile",
        "--window-size=1280,2400",
        f"--screenshot={screenshot}",
    )
    assert browser.returncode == 0, browser.stderr[-2000:]
    console = [line for line in browser.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console
    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=float)
    assert pixels.shape == (2400, 1280)
    assert pixels.std() > 10  # text, tables and plots, not a blank page
    assert (pixels < 128).mean() > 0.005


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["experiment_name=no-such-experiment"], "no-such-experiment"),
        (["sweep_id=no-such-sweep"], "no-such-sweep"),
        (["tags.dataset=no-such-dataset"], "nothing to report"),
        (["no_such_key=1"], "no_such_key is not a key of pipeline.report; allowed: experiment_"),
        (["params.lr.fine_tune=0.5"], "nothing to report"),
        (["sweep_id"], "sweep_id: give options as key=value; allowed keys: experiment_name"),
        (["log_to_mlflow=maybe"], "log_to_mlflow: Value 'maybe' is not a valid bool"),
        (['tags.note=it\'s "so"'], 'tags.note=it\'s "so" holds both quote characters'),
    ],
)
def test_report_mistakes_exit_2_with_one_line_and_nothing_written(
    study, tmp_path, capsys, arguments, message
):
    client = MlflowClient(study)
    before = len(client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id]))
    assert write(study, tmp_path / "report", *arguments) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and message in error and "\n" not in error
    assert not (tmp_path / "report").exists()
    after = len(client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id]))
    assert after == before


def test_the_readmes_filters_select_the_study_a_dotted_param_name_included(study, tmp_path):
    """`params.lr.fine_tune=0.0001` names the param `lr.fine_tune`: it once became a nested
    dict and MLflow refused the filter with a traceback."""
    filters = ["tags.dataset=digits", "params.lr.fine_tune=0.0001", "log_to_mlflow=false"]
    assert write(study, tmp_path / "report", *filters) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["filter"] == "tags.`dataset` = 'digits' and params.`lr.fine_tune` = '0.0001'"
    [variant] = report["variants"]
    assert variant["seeds"] == list(SEEDS)


@pytest.mark.parametrize("value", ["it's", 'a "quoted" word'])
def test_a_filter_value_with_a_quote_matches_the_runs_tagged_so(study, tmp_path, value):
    """MLflow's filter syntax has no escape: a value is put in the other kind of quotes."""
    client = MlflowClient(study)
    parents, _ = samples(client)
    tagged = next(run for run in parents if run.info.status == "FINISHED")
    client.set_tag(tagged.info.run_id, "note", value)
    try:
        assert write(study, tmp_path / "report", f"tags.note={value}", "log_to_mlflow=false") == 0
    finally:
        client.delete_tag(tagged.info.run_id, "note")
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    [variant] = report["variants"]
    assert variant["seeds"] == [seed_of(tagged)]


def test_an_out_folder_that_cannot_be_made_is_one_line(study, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = blocker / "report"
    assert write(study, out, "log_to_mlflow=false") == 2
    error = capsys.readouterr().err
    assert error == f"error: out={out} cannot be written: Not a directory: {out}\n"


def test_a_store_that_does_not_exist_is_refused_not_created(tmp_path, capsys):
    db = tmp_path / "nowhere" / "mlflow.db"
    assert write(f"sqlite:///{db}", tmp_path / "report") == 2
    assert reproduce_main(["0123abcd", f"tracking_uri=sqlite:///{db}"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(str(db) in line for line in errors)
    assert not db.parent.exists() and not (tmp_path / "report").exists()


@pytest.mark.slow
def test_reproduce_matches_then_catches_an_altered_metric(study, capsys):
    client = MlflowClient(study)
    parents, stages = samples(client)
    original = next(r for r in parents if seed_of(r) == 1)
    assert reproduce_main([original.info.run_id, f"tracking_uri={study}"]) == 0
    shown = capsys.readouterr()
    assert "reproduced: every final metric matches" in shown.out
    assert "Downloading artifacts" not in shown.err  # MLflow's bar for the one config file
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    [again] = client.search_runs([experiment_id], f"tags.reproduces = '{original.info.run_id}'")
    assert again.data.tags["reproduced"] == "true" and again.info.status == "FINISHED"

    fine_tune = next(
        r for r in stages["fine_tune"] if r.data.tags["mlflow.parentRunId"] == original.info.run_id
    )
    altered = fine_tune.data.metrics["test_accuracy"] + 0.125
    client.log_metric(fine_tune.info.run_id, "test_accuracy", altered)
    # a stage run's id stands for its parent
    assert reproduce_main([fine_tune.info.run_id, f"tracking_uri={study}"]) == 1
    error = capsys.readouterr().err
    assert "not reproduced: fine_tune.test_accuracy" in error
    verdicts = client.search_runs([experiment_id], f"tags.reproduces = '{original.info.run_id}'")
    assert sorted(r.data.tags["reproduced"] for r in verdicts) == ["false", "true"]

    assert reproduce_main(["0123abcd", f"tracking_uri={study}"]) == 2
    assert "run_id='0123abcd'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("tolerence=0.1", "tolerence is not a key of pipeline.reproduce; allowed: tolerance, "),
        ("tolerance=x", "tolerance: Value 'x' of type 'str' could not be converted to Float"),
        ("tolerance=-1", "tolerance=-1.0 is out of range; allowed: a finite number >= 0"),
    ],
)
def test_reproduce_option_mistakes_are_one_line(study, capsys, option, message):
    assert reproduce_main(["0123abcd", option, f"tracking_uri={study}"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {message}") and error.count("\n") == 1, error


def test_the_report_lists_reproductions_apart_from_samples(study, tmp_path):
    client = MlflowClient(study)
    parents, _ = samples(client)
    original = next(r for r in parents if seed_of(r) == 2)
    assert reproduce_main([original.info.run_id, f"tracking_uri={study}"]) == 0
    assert write(study, tmp_path / "report", "log_to_mlflow=false") == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    checks = [r for r in report["reproductions"] if r["reproduces"] == original.info.run_id]
    assert [c["reproduced"] for c in checks] == ["true"]
    assert report["variants"][0]["seeds"] == list(SEEDS)  # the re-run is not a fourth sample
    assert original.info.run_id[:8] in (tmp_path / "report" / "report.md").read_text()


def test_a_tolerance_that_is_not_a_finite_number_is_refused_before_anything_runs(tmp_path, capsys):
    """`tolerance=nan` compared nothing as equal: the whole experiment ran, then exit 1."""
    for value in ("nan", "inf"):
        assert reproduce_main(["0123abcd", f"tolerance={value}", "tracking_uri=sqlite:///x"]) == 2
        error = capsys.readouterr().err
        assert error == f"error: tolerance={value} is out of range; allowed: a finite number >= 0\n"


def empty_file(db: Path) -> None:
    db.write_bytes(b"")


def unrelated_sqlite(db: Path) -> None:
    import sqlite3

    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
    connection.close()


@pytest.mark.parametrize("spoil", [empty_file, unrelated_sqlite])
def test_readers_never_create_or_migrate_a_store(tmp_path, capfd, spoil):
    """A 0-byte file or another program's SQLite file: MLflow made ~200 tables in it."""
    db = tmp_path / "mlflow.db"
    spoil(db)
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    uri = f"sqlite:///{db}"
    assert write(uri, tmp_path / "report") == 2
    assert reproduce_main(["0123abcd", f"tracking_uri={uri}"]) == 2
    captured = capfd.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2, captured.err
    assert all(e.startswith(f"error: tracking_uri: {db} is not an MLflow store") for e in errors)
    assert "Creating initial MLflow database tables" not in captured.out + captured.err
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before
    assert not (tmp_path / "report").exists()


def test_an_empty_sweep_id_is_refused_not_read_as_every_sweep(tmp_path, capsys):
    assert write("sqlite:///nowhere.db", tmp_path / "report", "sweep_id=") == 2
    error = capsys.readouterr().err
    assert error == "error: sweep_id= is empty; allowed: a value, or leave sweep_id out\n"


def test_report_store_errors_name_its_own_key(tmp_path, capsys):
    """The report's key is `tracking_uri`; `tracking.uri` and `tracking=sqlite` are the
    pipeline's."""
    assert write("http://127.0.0.1:9", tmp_path / "report") == 2
    error = capsys.readouterr().err
    assert error.startswith("error: tracking_uri=http://127.0.0.1:9 is unreachable"), error
    assert "tracking.uri" not in error and "tracking=sqlite" not in error


def test_reproduce_interrupted_before_the_rerun_starts_says_nothing_ran(monkeypatch, capsys):
    from pipeline import reproduce

    def interrupted() -> None:
        raise KeyboardInterrupt("signal SIGTERM")

    monkeypatch.setattr(reproduce, "import_tensorflow_quietly", interrupted)
    assert reproduce_main(["0123abcd"]) == 130
    assert capsys.readouterr().err == "error: interrupted (signal SIGTERM); nothing was run\n"


def test_reproducing_a_run_that_did_not_finish_is_refused_in_one_line(study, tmp_path, capsys):
    """A KILLED or FAILED run ran in full, then every old value was `-`: refused up front."""
    uri = copy_store(Path(study.removeprefix("sqlite:///")), tmp_path / "mlflow.db")
    client = MlflowClient(uri)
    parents, _ = samples(client)
    failed = next(r for r in parents if r.info.status == "FAILED")
    killed = next(r for r in parents if r.info.status == "FINISHED")
    client.set_terminated(killed.info.run_id, "KILLED")
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    before = client.search_runs([experiment_id], "tags.reproduces != ''")  # earlier tests' own
    for run, status in ((failed, "FAILED"), (killed, "KILLED")):
        assert reproduce_main([run.info.run_id, f"tracking_uri={uri}"]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and f"ended {status}; allowed: a FINISHED run" in error
    after = client.search_runs([experiment_id], "tags.reproduces != ''")
    assert len(after) == len(before), "a refused reproduce logged a run"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("delay_s", [2.0, 4.0])
def test_an_interrupted_report_is_one_line_and_130_and_leaves_no_half_folder(
    study, tmp_path, signum, delay_s
):
    """SIGTERM exited 143 silently leaving an empty folder; Ctrl-C printed a long traceback."""
    out = tmp_path / "report"
    command = [sys.executable, "-m", "pipeline.report", f"tracking_uri={study}", f"out={out}"]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stderr=subprocess.PIPE, text=True,
                               stdout=subprocess.DEVNULL)  # fmt: skip
    time.sleep(delay_s)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the report finished before the signal")
    assert process.returncode == 130, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: interrupted"), stderr[-2000:]
    assert not out.exists() or (out / "report.json").exists()
