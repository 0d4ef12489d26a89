"""The table printed at the end of an experiment."""

from __future__ import annotations

COLUMNS = ("stage", "best val acc", "test acc", "epochs", "seconds", "run id")


def summary_table(rows, parent_run_id: str, ui_command: str) -> str:
    """One line a stage; then the parent run and how to open the MLflow UI."""
    cells = [
        (
            result.stage,
            f"{result.best_val_accuracy:.4f}",
            f"{result.test_accuracy:.4f}",
            str(result.fit.epochs),
            f"{result.seconds:.1f}",
            run_id,
        )
        for result, run_id in rows
    ]
    widths = [max(len(row[i]) for row in [COLUMNS, *cells]) for i in range(len(COLUMNS))]
    line = "  ".join
    out = [line(h.ljust(w) for h, w in zip(COLUMNS, widths, strict=True))]
    out.append(line("-" * w for w in widths))
    out += [line(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    out.append(f"\nparent run: {parent_run_id}")
    out.append(f"compare runs: {ui_command}")
    return "\n".join(out)
