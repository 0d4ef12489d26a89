"""The one place that reaches into Hydra's private API (hydra-core 1.3).

tests/test_internals.py checks it on Hydra's real parser, so that a Hydra upgrade that changes it
fails there, naming this module.
"""

from __future__ import annotations

import argparse

from hydra._internal.utils import get_args_parser

# The flags of Hydra's command line that print something instead of running (its namespace's
# attribute names): with one of them the preflight check leaves the command to Hydra.
INFO_FLAGS = ("help", "hydra_help", "cfg", "info", "shell_completion", "resolve")


def parse_command_line(argv: list[str]) -> argparse.Namespace:
    """`argv` read as `@hydra.main` reads it: `overrides`, `multirun` and the INFO_FLAGS. Missing
    publicly: Hydra 1.3 parses its command line only inside `hydra.main`, which then runs the app;
    the parser itself lives in `hydra._internal.utils`."""
    return get_args_parser().parse_args(argv)
