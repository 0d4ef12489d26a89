"""Process-wide settings for one command, made once by the entry point and undone when it ends.

Warnings, TensorFlow's logging, op determinism and the exit are global state: the entry point
sets them here (never at import), and restores what was there before, so that a caller that runs
a command in-process (a notebook, a test) gets its process back unchanged.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from pipeline.cli.python_internals import run_exit_handlers
from pipeline.config import Config
from pipeline.tensorflow_internals import disable_op_determinism, op_determinism_enabled


def quiet_tensorflow_startup() -> None:
    """TensorFlow's C++ start-up chatter hides the progress; warnings and errors still show.
    Read by TensorFlow when it loads: call before importing it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# Printed by absl while TensorFlow's libraries load, before TF_CPP_MIN_LOG_LEVEL is consulted,
# and (as an error) when looking for a GPU on a machine without a CUDA driver.
STARTUP_CHATTER = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog"
    r"|[IW]\d{4} "
    r"|E\d{4} .*failed call to cuInit)"
)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its start-up info lines filtered from stderr (other lines pass).

    With TF_CPP_MIN_LOG_LEVEL=0 set by the user nothing is filtered.
    """
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        import tensorflow

        return
    quiet_tensorflow_startup()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow

            tensorflow.config.list_physical_devices("GPU")  # CUDA's probe, while captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines()
            for line in lines:
                if not STARTUP_CHATTER.match(line):
                    print(line, file=sys.stderr)


@contextmanager
def environment_default(name: str, value: str) -> Iterator[None]:
    """`name=value` in the environment for the block, unless the user set it; then as it was."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


# MLflow's download bar for a reused backbone's weights: one more line of noise per run.
ARTIFACT_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@contextmanager
def configured(cfg: Config) -> Iterator[None]:
    """Seeds, optional op determinism, quiet TensorFlow and MLflow for the block, then as they
    were."""
    import keras
    import tensorflow as tf

    level = tf.get_logger().level
    was_deterministic = op_determinism_enabled()  # the public API cannot undo it
    with warnings.catch_warnings(), environment_default(ARTIFACT_PROGRESS_BAR, "false"):
        # Keras warns that fit's shuffle=True is ignored for tf.data: ours shuffle themselves.
        warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
        tf.get_logger().setLevel("ERROR")  # retracing notices from predicting on several splits
        keras.utils.set_random_seed(cfg.seed)
        if cfg.deterministic:
            tf.config.experimental.enable_op_determinism()
        try:
            yield
        finally:
            tf.get_logger().setLevel(level)
            if cfg.deterministic and not was_deterministic:
                disable_op_determinism()


def exit_promptly(code: int | str | None) -> None:
    """`sys.exit(code)`, without the interpreter's teardown once TensorFlow is loaded (over a
    second of freeing its modules, for nothing): exit handlers run and output is flushed, then
    the process ends. Without TensorFlow, or while a thread that is not a daemon still runs (at
    an exit it is waited for), it is `sys.exit(code)` itself.
    """
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if "tensorflow" not in sys.modules or any(not thread.daemon for thread in others):
        sys.exit(code)
    if code is not None and not isinstance(code, int):  # sys.exit("message")
        print(code, file=sys.stderr)
        code = 1
    run_exit_handlers()  # what the interpreter runs at exit: logging's flush, MLflow's, ...
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError):  # a closed pipe: nothing more can reach it
            stream.flush()
    os._exit(code or 0)
