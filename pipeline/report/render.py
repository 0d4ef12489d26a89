"""A study written out: report.json, report.md (with its PNGs), report.html (one file, plots
embedded) and table.tex (booktabs). The same study renders to the same bytes, but for the one
`generated` line of each file."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from pipeline.config import STAGES
from pipeline.report import figures
from pipeline.report.statistics import BOOTSTRAP_RESAMPLES, RANDOM_STATE

ASSUMES_RANDOM = ("bayesian", "hyperband")


def number(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def interval(low, high) -> str:
    return "-" if low is None else f"[{low:.4f}, {high:.4f}]"


def pretraining_clause(report: dict) -> str:
    """Whether the seeds of a variant shared one pretrained backbone (backbone.source.seed)."""
    counts = [len(v["provenance"]["backbone_runs"]) for v in report["variants"]]
    if not any(counts):
        return ""
    if max(counts) > 1:
        return (
            " The pretrained backbone varies across seeds too (pretrained per seed: "
            "backbone.source.seed follows the seed), so pretraining's randomness is sampled."
        )
    return (
        " Every seed of a variant transferred the same pretrained backbone (backbone.source.seed "
        "is fixed): pretraining's own randomness is not sampled."
    )


def statement(report: dict) -> str:
    """What varies, how the intervals were computed, n per cell, std vs standard error."""
    cells = sorted({v["n"] for v in report["variants"]})
    tuners = sorted({s["tuner"] for v in report["variants"] for s in v["searches"]})
    text = (
        "Each variant (one configuration) was run once per seed; the seeds are the samples. The "
        "seed sets the initial weights (the scratch model, every new head), the draw of the "
        "labelled training examples where the dataset samples them (train_per_class), the "
        "shuffling, dropout and, in searches, the tuner's draws; validation and test splits are "
        f"fixed by dataset.split_seed. n per cell: {', '.join(map(str, cells))} (shown in every "
        "table). Spread is the sample standard deviation over seeds (std, not the standard "
        "error). Intervals are 95 % Student's t intervals of the mean over seeds (n - 1 degrees "
        "of freedom). Gains are paired by seed (same seed, splits and initialisation of the parts "
        "the stages share); besides the t interval of the mean difference, a BCa bootstrap "
        f"interval (scipy.stats.bootstrap, {BOOTSTRAP_RESAMPLES} resamples, random_state="
        f"{RANDOM_STATE}) and an exact two-sided sign-flip permutation p-value "
        "(scipy.stats.permutation_test over all 2^n sign flips) are given; p-values are "
        "Holm-corrected across the comparisons of a variant. Variants with fewer than 3 seeds "
        "are flagged."
    )
    text += pretraining_clause(report)
    if tuners:
        text += (
            " The expected best validation score as a function of the number of trials follows "
            "Dodge et al. (2019), from the trials' empirical distribution, with its variance"
        )
        used = [t for t in tuners if t in ASSUMES_RANDOM]
        text += (
            f"; it assumes independent random-search draws, which the {', '.join(used)} tuner "
            "does not make, so there it is indicative only."
            if used
            else "."
        )
    return text


def stage_rows(variant: dict) -> list[list[str]]:
    rows = []
    for stage in STAGES:
        if stage not in variant["stages"]:
            continue
        for metric, s in variant["stages"][stage].items():
            rows.append(
                [
                    stage,
                    metric,
                    str(s["n"]),
                    number(s["mean"]),
                    number(s["std"]),
                    interval(s["ci_low"], s["ci_high"]),
                    number(s["min"]),
                    number(s["max"]),
                ]
            )
    return rows


STAGE_HEADER = ["stage", "metric", "n", "mean", "std", "95 % CI (t)", "min", "max"]
GAIN_HEADER = [
    "comparison",
    "n",
    "mean gain",
    "95 % CI (t)",
    "95 % CI (BCa)",
    "wins",
    "p",
    "p (Holm)",
]


def gain_rows(variant: dict) -> list[list[str]]:
    return [
        [
            f"{g['first']} - {g['second']}",
            str(len(g["seeds"])),
            number(g["mean"]),
            interval(g["t_low"], g["t_high"]),
            interval(g["bca_low"], g["bca_high"]),
            f"{g['wins']:.0%}",
            number(g["p_value"], 3),
            number(g["p_holm"], 3),
        ]
        for g in variant["gains"]
    ]


def figure_set(report: dict) -> dict[str, bytes]:
    """Every plot of the report, by file name."""
    files = {"gains_forest.png": figures.forest(report["variants"])}
    for index, variant in enumerate(report["variants"], start=1):
        files[f"variant{index}_paired.png"] = figures.paired_lines(variant)
        if variant["curves"]:
            files[f"variant{index}_curves.png"] = figures.learning_curves(variant)
        for search in variant["searches"]:
            files[f"variant{index}_search_seed{search['seed']}.png"] = figures.search_plot(search)
    return files


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def sections(report: dict) -> list[tuple[str, str, list[tuple[list[str], list]], list[str]]]:
    """(title, text, tables, images) per section, shared by the Markdown and HTML renderings."""
    out = []
    for index, v in enumerate(report["variants"], start=1):
        text = [f"variant_hash {v['variant_hash']}; seeds {v['seeds']}."]
        text += [f"Warning: {v['warning']}."] if v["warning"] else []
        text += [f"Absent: {a}." for a in v["absent"]]
        prov = v["provenance"]
        text.append(
            f"git {', '.join(prov['git_commits'])}; backbone runs {prov['backbone_runs'] or '-'}; "
            f"versions {json.dumps(prov['versions'], sort_keys=True)}."
        )
        text += [
            f"Best trial of seed {s['seed']}: {s['best_trial_id']} ({number(s['best'])})."
            for s in v["searches"]
        ]
        tables = [(STAGE_HEADER, stage_rows(v)), (GAIN_HEADER, gain_rows(v))]
        tables.append(
            (
                ["seed", "parent run", "command"],
                [[str(r["seed"]), r["run_id"], r["command"]] for r in v["runs"]],
            )
        )
        images = [n for n in report["figures"] if n.startswith(f"variant{index}_")]
        out.append((f"Variant {index}: {v['label']}", " ".join(text), tables, images))
    return out


def excluded_text(report: dict) -> str:
    text = "No run was excluded."
    if report["excluded"]:
        text = "Excluded (not FINISHED): " + "; ".join(
            f"{e['run_id']} seed {e['seed']} {e['status']} {e['error']}".strip()
            for e in report["excluded"]
        )
    if report["reproductions"]:
        text += " Reproductions (python -m pipeline.reproduce; not samples): " + "; ".join(
            f"{r['run_id']} of {r['reproduces']}: reproduced={r['reproduced']}"
            for r in report["reproductions"]
        )
    return text


def write_markdown(report: dict, folder: Path) -> Path:
    parts = [f"# Study report: {report['experiment']}", "", f"generated: {report['generated']}"]
    parts += ["", report["statement"], "", excluded_text(report), "", "![gains](gains_forest.png)"]
    for title, text, tables, images in sections(report):
        parts += ["", f"## {title}", "", text]
        for header, rows in tables:
            parts += ["", markdown_table(header, rows)]
        parts += [""] + [f"![{name}]({name})" for name in images]
    path = folder / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return path


def html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def image_tag(name: str, data: bytes) -> str:
    encoded = base64.b64encode(data).decode()
    return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{encoded}">'


STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#111}"
    "table{border-collapse:collapse;margin:1em 0;font-size:0.85em}"
    "td,th{border:1px solid #999;padding:2px 6px;text-align:left}img{max-width:100%}"
)


def write_html(report: dict, images: dict[str, bytes], folder: Path) -> Path:
    title = f"Study report: {html.escape(report['experiment'])}"
    head = f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
    parts = [
        head,
        f"<style>{STYLE}</style></head><body><h1>{title}</h1>",
        f"<p>generated: {html.escape(report['generated'])}</p>",
        f"<p>{html.escape(report['statement'])}</p><p>{html.escape(excluded_text(report))}</p>",
        image_tag("gains_forest.png", images["gains_forest.png"]),
    ]
    for section_title, text, tables, names in sections(report):
        parts += [f"<h2>{html.escape(section_title)}</h2><p>{html.escape(text)}</p>"]
        parts += [html_table(header, rows) for header, rows in tables]
        parts += [image_tag(name, images[name]) for name in names]
    path = folder / "report.html"
    path.write_text("\n".join(parts) + "\n</body></html>\n")
    return path


def tex_escape(text: str) -> str:
    return text.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%")


def write_tex(report: dict, folder: Path) -> Path:
    lines = [
        f"% generated: {report['generated']}",
        r"\begin{tabular}{llrrrl}",
        r"\toprule",
        r"variant & stage & n & mean & std & 95\,\% CI (t) \\",
        r"\midrule",
    ]
    for v in report["variants"]:
        for stage in STAGES:
            s = v["stages"].get(stage, {}).get("test_accuracy")
            if s is not None:
                cells = [
                    tex_escape(v["label"]),
                    tex_escape(stage),
                    str(s["n"]),
                    number(s["mean"]),
                    number(s["std"]),
                    interval(s["ci_low"], s["ci_high"]),
                ]
                lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    path = folder / "table.tex"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_report(report: dict, folder: Path) -> list[Path]:
    """Every file of the report into `folder`; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    report["statement"] = statement(report)
    images = figure_set(report)
    report["figures"] = sorted(images)
    written = []
    for name, data in images.items():
        (folder / name).write_bytes(data)
        written.append(folder / name)
    json_path = folder / "report.json"
    json_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    written += [json_path, write_markdown(report, folder), write_html(report, images, folder)]
    written.append(write_tex(report, folder))
    return written
