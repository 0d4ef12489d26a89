"""A study written out: report.json, report.md (with its PNGs), report.html (one file, plots
embedded) and table.tex (booktabs), the pages from Jinja2 templates (templates/). The same study
renders to the same bytes, but for the one `generated` line of each file.

Readable at any size: a verdict first, then one summary row per variant (sortable in the HTML),
the forest plot of gains (one row per variant, by effect, 100 rows a picture), the per-variant
sections (folded in the HTML once there are more than a few), the methods paragraph last.
Per-variant plots are drawn for the first `variant_figures` variants only: drawing is most of a
report's time, and hundreds of them read as nothing.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from pipeline.config import STAGES
from pipeline.report import figures
from pipeline.report.methods import statement
from pipeline.report.records import GainRecord, Study, VariantRecord
from pipeline.report.study import COMPARISONS

VARIANT_FIGURES = 6  # per-variant plots for this many variants (variant_figures=)
OPEN_SECTIONS = 5  # the HTML's variant sections start unfolded in studies this small
PRIMARY = ("fine_tune", "scratch")  # the comparison the verdict and the summary lead with


GAIN_HEADER = ["comparison", "n", "mean gain", "95 % CI (t)", "95 % CI (BCa)", "wins", "p"]
GAIN_HEADER.append("p (Holm)")


GAIN_HEADER = ["comparison", "n", "mean gain", "95 % CI (t)", "95 % CI (BCa)", "wins", "p"]
GAIN_HEADER.append("p (Holm)")


def number(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def signed(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def interval(low, high) -> str:
    return "-" if low is None else f"[{low:.4f}, {high:.4f}]"


def tex_escape(text: str) -> str:
    return text.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%")


def comparisons(study: Study) -> list[tuple[str, str]]:
    """The comparisons some variant has, in the report's order."""
    present = {(g.first, g.second) for v in study.variants for g in v.gains}
    return [c for c in COMPARISONS if c in present]


def primary(study: Study) -> tuple[str, str] | None:
    found = comparisons(study)
    return PRIMARY if PRIMARY in found else (found[0] if found else None)


def direction(gain: GainRecord) -> str:
    """above | below | unclear: where the t 95 % interval of the mean gain lies against 0."""
    if gain.t_low is None:
        return "unclear"
    return "above" if gain.t_low > 0 else "below" if gain.t_high < 0 else "unclear"


def verdict(study: Study, order: list[int]) -> list[str]:
    """A few sentences: per comparison, how many variants gain; the best variant."""
    lines = []
    for comparison in comparisons(study):
        gains = [g for v in study.variants if (g := v.gain(*comparison)) is not None]
        counts = {key: sum(direction(g) == key for g in gains) for key in ("above", "below")}
        if len(gains) == 1:
            g = gains[0]
            lines.append(
                f"{g.name}: mean gain {signed(g.mean)}, 95 % CI (t) {interval(g.t_low, g.t_high)}"
                f", {direction(g)} zero (n = {len(g.seeds)})."
            )
        else:
            lines.append(
                f"{comparison[0]} - {comparison[1]}: the 95 % t interval of the gain is above zero "
                f"in {counts['above']} of {len(gains)} variants, below zero in {counts['below']}."
            )
    lead = primary(study)
    if lead is not None and len(study.variants) > 1:
        best = study.variants[order[0]]
        gain = best.gain(*lead)
        lines.append(
            f"Largest {lead[0]} - {lead[1]} gain: variant {order[0] + 1} ({best.label}), "
            f"{signed(gain.mean)} {interval(gain.t_low, gain.t_high)}."
        )
    return lines


def summary_rows(study: Study, order: list[int]) -> list[dict]:
    """One row per variant, in `order`: test accuracy per stage and the lead comparison."""
    lead = primary(study)
    rows = []
    for index in order:
        v = study.variants[index]
        means = {s: v.stages[s]["test_accuracy"].mean if s in v.stages else None for s in STAGES}
        gain = v.gain(*lead) if lead is not None else None
        rows.append({"index": index + 1, "variant": v, "means": means, "gain": gain})
    return rows


def stage_rows(variant: VariantRecord) -> list[list[str]]:
    rows = []
    for stage in STAGES:
        for metric, s in variant.stages.get(stage, {}).items():
            cells = [number(s.mean), number(s.std), interval(s.ci_low, s.ci_high)]
            rows.append([stage, metric, str(s.n), *cells, number(s.min), number(s.max)])
    return rows


def gain_rows(variant: VariantRecord) -> list[list[str]]:
    return [
        [
            g.name,
            str(len(g.seeds)),
            number(g.mean),
            interval(g.t_low, g.t_high),
            interval(g.bca_low, g.bca_high),
            f"{g.wins:.0%}",
            number(g.p_value, 3),
            number(g.p_holm, 3),
        ]
        for g in variant.gains
    ]


def excluded_text(study: Study) -> str:
    text = "No run was excluded."
    if study.excluded:
        text = "Excluded (not FINISHED): " + "; ".join(
            f"{e.run_id} seed {e.seed} {e.status} {e.error}".strip() for e in study.excluded
        )
    if study.reproductions:
        text += " Reproductions (python -m pipeline.reproduce; not samples): " + "; ".join(
            f"{r.run_id} of {r.reproduces}: reproduced={r.reproduced}" for r in study.reproductions
        )
    return text


def figure_set(study: Study, order: list[int], variant_figures: int) -> dict[str, bytes]:
    """Every plot of the report, by file name: the forest pages, then per-variant plots."""
    files = {}
    found = comparisons(study)
    if found:
        size = figures.ROWS_PER_PAGE
        for page, start in enumerate(range(0, len(order), size), start=1):
            name = "gains_forest.png" if page == 1 else f"gains_forest_{page}.png"
            files[name] = figures.forest(study.variants, order[start : start + size], found)
    for index, variant in enumerate(study.variants[:variant_figures], start=1):
        files[f"variant{index}_paired.png"] = figures.paired_lines(variant)
        if variant.curves:
            files[f"variant{index}_curves.png"] = figures.learning_curves(variant)
        for search in variant.searches:
            files[f"variant{index}_search_seed{search.seed}.png"] = figures.search_plot(search)
    return files


def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("pipeline.report", "templates"),
        autoescape=select_autoescape(["html.j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(number=number, signed=signed, tex=tex_escape)
    env.globals.update(interval=interval, stage_rows=stage_rows, gain_rows=gain_rows)
    return env


def context(study: Study, images: dict[str, bytes], variant_figures: int) -> dict:
    order = figures.forest_order(study.variants, primary(study) or PRIMARY)
    return {
        "study": study,
        "verdict": verdict(study, order),
        "excluded": excluded_text(study),
        "lead": primary(study),
        "stages": [s for s in STAGES if any(s in v.stages for v in study.variants)],
        "summary": summary_rows(study, order),
        "forests": [n for n in images if n.startswith("gains_forest")],
        "rows_per_page": figures.ROWS_PER_PAGE,
        "images": images,
        "drawn": min(variant_figures, len(study.variants)),
        "open_sections": len(study.variants) <= OPEN_SECTIONS,
        "per_variant": {
            i: [n for n in images if n.startswith(f"variant{i}_")]
            for i in range(1, len(study.variants) + 1)
        },
        "stage_header": ["stage", "metric", "n", "mean", "std", "95 % CI (t)", "min", "max"],
        "gain_header": GAIN_HEADER,
        "data_uri": lambda name: "data:image/png;base64," + base64.b64encode(images[name]).decode(),
    }


def write_report(study: Study, folder: Path, variant_figures: int = VARIANT_FIGURES) -> list[Path]:
    """Every file of the report into `folder`; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    study.statement = statement(study)
    order = figures.forest_order(study.variants, primary(study) or PRIMARY)
    images = figure_set(study, order, max(variant_figures, 0))
    study.figures = sorted(images)
    written = []
    for name, data in images.items():
        (folder / name).write_bytes(data)
        written.append(folder / name)
    json_path = folder / "report.json"
    # one space a level: at hundreds of variants the curves are most of the file
    json_path.write_text(json.dumps(asdict(study), indent=1, sort_keys=True) + "\n")
    written.append(json_path)
    env, values = environment(), context(study, images, max(variant_figures, 0))
    for template, name in (("report.md.j2", "report.md"), ("report.html.j2", "report.html")):
        path = folder / name
        path.write_text(env.get_template(template).render(values))
        written.append(path)
    tex = folder / "table.tex"
    tex.write_text(env.get_template("table.tex.j2").render(values))
    return [*written, tex]
