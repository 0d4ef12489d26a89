"""The guide cannot rot: its commands compose, its generated pages are current, --help says what.

Every `python -m pipeline ...` command in a code block of README.md or docs/**/*.md is composed
in-process with Hydra's compose API (`pipeline.cli.preflight`: every value of a sweep, the schema,
the checks before training), and its `hydra/...` choices with Hydra's own config; the helper
commands (`pipeline.report`, `pipeline.reproduce`, `pipeline.replicate`) have their options
parsed. A code block preceded by `<!-- fails: LINE -->` must fail with LINE.
"""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from pipeline import PROJECT_ROOT
from pipeline.cli.hydra_internals import parse_command_line
from pipeline.cli.preflight import check_composition, hydra_overrides, variants
from pipeline.errors import ConfigError

PAGES = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"(?:<!-- fails: (?P<fails>.*?) -->\s*\n)?```[^\n]*\n(?P<body>.*?)```", re.S)
COMMAND = re.compile(r"^(?:\w+=\S*\s+)*python -m pipeline|&&\s*python -m pipeline")
ASSIGNMENT = re.compile(r'^(?:export )?(\w+)="([^"]*)"\s*(?:#.*)?$')


def commands(text: str) -> list[tuple[str, str | None]]:
    """(command, expected failure line or None) for every python -m pipeline command of a page."""
    found = []
    for block in BLOCK.finditer(text):
        body = block.group("body").replace("\\\n", " ")
        assigned: dict[str, str] = {}
        for line in body.splitlines():
            line = line.strip().removeprefix("$ ")
            if match := ASSIGNMENT.match(line):
                assigned[match.group(1)] = match.group(2)
            if not COMMAND.search(line):  # a shell line, not prose that names the command
                continue
            for name, value in assigned.items():
                line = line.replace(f"${name}", value)
            for part in segments(line):
                if part[2].split(".")[0] == "pipeline":
                    found.append((shlex.join(part), block.group("fails")))
    return found


def segments(line: str) -> list[list[str]]:
    """A shell line's simple commands (split at `&&`, `;`, `|`), environment assignments dropped."""
    line = re.sub(r"<([^<>]+)>", lambda m: m.group(1).replace(" ", "_"), line)  # <run id>
    line = re.sub(r"\s#\s.*$", "", line)  # a comment may hold a lone quote
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split, lexer.commenters = True, "#"
    parts: list[list[str]] = [[]]
    for token in lexer:
        if set(token) <= set(";&|"):
            parts.append([])
        elif parts[-1] or not re.match(r"^\w+=", token):
            parts[-1].append(token)
    return [part for part in parts if part[:2] == ["python", "-m"]]


def documented() -> list[tuple[str, str, str | None]]:
    return [
        (str(page.relative_to(PROJECT_ROOT)), command, fails)
        for page in PAGES
        for command, fails in commands(page.read_text())
    ]


def argv_of(command: str) -> tuple[str, list[str]]:
    """The module (`pipeline`, `pipeline.report`, ...) and its arguments, placeholders filled."""
    tokens = shlex.split(command)
    return tokens[2], tokens[3:]


def hydra_problem(argv: list[str]) -> str | None:
    """What composing the command's `hydra/...` choices and `hydra.*` keys says, if anything."""
    args = parse_command_line(argv)
    own = hydra_overrides(args)
    if not own:
        return None
    rest = [o for o in args.overrides if o not in own]
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        try:
            compose("config", overrides=[*variants(rest)[0], *own], return_hydra_config=True)
        except Exception as error:  # Hydra's errors have no common base: the first line says it
            return str(error).splitlines()[0]
    return None


def problem(module: str, argv: list[str]) -> str | None:
    """None when the command composes or parses; else the one line it fails with."""
    if module == "pipeline":
        return check_composition(argv) or hydra_problem(argv)
    helper = importlib.import_module(module)
    if not hasattr(helper, "parse"):
        helper = importlib.import_module(f"{module}.__main__")
    try:
        helper.parse(argv)
    except ConfigError as error:
        return str(error)
    return None


def test_the_guide_has_commands_to_check():
    found = documented()
    assert len(found) >= 40, found
    assert any(fails for _, _, fails in found), "no command marked to fail"
    assert {argv_of(c)[0] for _, c, _ in found} >= {"pipeline", "pipeline.report"}


@pytest.mark.parametrize(("page", "command", "fails"), documented())
def test_every_documented_command_composes(page, command, fails, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    module, argv = argv_of(command)
    found = problem(module, argv)
    if fails is None:
        assert found is None, f"{page}: {command}\n  -> {found}"
    else:
        assert found is not None, f"{page}: {command} composes, but is documented to fail"
        assert f"error: {found}".startswith(fails), f"{page}: {command}\n  -> error: {found}"


def test_a_renamed_key_breaks_the_check():
    """The check is live: a key that is not in the schema fails, naming it."""
    found = problem("pipeline", ["train.patience_epochs=3"])
    assert found is not None and "train.patience_epochs" in found


@pytest.mark.parametrize(
    "script", ["docs/scripts/config_reference.py", "bench/publish.py"], ids=["config", "benchmarks"]
)
def test_generated_pages_are_current(script):
    done = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / script), "--check"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_the_reference_lists_every_key_and_option():
    page = (PROJECT_ROOT / "docs" / "reference" / "configuration.md").read_text()
    for key in ["train.cache_boundary", "search.learning_rate.sampling", "tracking.orphan_after_s"]:
        assert f"| `{key}` |" in page
    assert "`val_accuracy`, `val_loss`" in page  # an Enum's allowed values
    for option in (PROJECT_ROOT / "conf").glob("*/*.yaml"):
        assert f"| `{option.parent.name}` | `{option.stem}` |" in page


def test_help_introduces_the_tool_and_points_to_the_guide():
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", return_hydra_config=True)
    header = cfg.hydra.help.header
    assert header.startswith("Transfer Lab") and "docs/" in header
    assert "powered by Hydra" not in cfg.hydra.help.template.replace("${hydra.help.header}", header)


@pytest.mark.parametrize("page", ["README.md", "CHANGELOG.md"])
def test_the_front_pages_link_to_files_that_exist(page):
    """mkdocs checks the guide's links; the README and the changelog live outside it."""
    text = (PROJECT_ROOT / page).read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert local, "no relative link found"
    missing = [t for t in local if not (PROJECT_ROOT / t).exists()]
    assert not missing, f"{page} links to missing files: {missing}"
