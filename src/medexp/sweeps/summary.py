"""Tables and plots of sweep results: ranked rows as CSV, Markdown, HTML, and the objective per trial as a PNG.

Rows are plain dicts (column -> value), built from MLflow runs by ``medexp.tracking``; this module only
ranks and renders them, so the sweep's parent run and ``medexp-compare`` show the same table.
"""
from __future__ import annotations

import csv
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def rank(rows: Sequence[Row], key: str, maximize: bool) -> list[Row]:
    """Rows best first by ``key``; rows without a finite value keep their order at the end."""
    scored = [r for r in rows if is_number(r.get(key))]
    rest = [r for r in rows if not is_number(r.get(key))]
    return sorted(scored, key=lambda r: r[key], reverse=maximize) + rest


def columns_of(rows: Sequence[Row]) -> list[str]:
    """Every column that any row has, in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def fmt(value: Any) -> str:
    """A cell for people: floats (also as text, as MLflow tags and params hold them) at 4 significant digits."""
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return value if number.is_integer() and "." not in value else f"{number:.4g}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def to_markdown(rows: Sequence[Row], columns: Sequence[str]) -> str:
    def cell(value: Any) -> str:
        return fmt(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_text(rows: Sequence[Row], columns: Sequence[str]) -> str:
    """A fixed-width table for the terminal."""
    cells = [[fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines) + "\n"


def to_html_table(rows: Sequence[Row], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(r.get(c)))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_csv(rows: Sequence[Row], columns: Sequence[str], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot_objective(rows: Sequence[Row], x: str, y: str, state: str, maximize: bool, title: str, path: Path) -> None:
    """The objective of each trial in order, pruned/failed ones marked apart, with the best-so-far line."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, safe in any process

    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
    points = sorted((r for r in rows if is_number(r.get(x)) and is_number(r.get(y))), key=lambda r: r[x])
    for label, marker in (("COMPLETE", "o"), ("PRUNED", "x"), ("FAIL", "s")):
        chosen = [r for r in points if r.get(state, "COMPLETE") == label]
        if chosen:
            ax.scatter([r[x] for r in chosen], [r[y] for r in chosen], marker=marker, label=label.lower())
    complete = [r for r in points if r.get(state, "COMPLETE") == "COMPLETE"]
    if complete:
        best, running = [], None
        for r in complete:
            running = r[y] if running is None else (max if maximize else min)(running, r[y])
            best.append(running)
        ax.step([r[x] for r in complete], best, where="post", color="grey", label="best so far")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title)
    if points:
        ax.legend(loc="best")
    else:
        ax.text(0.5, 0.5, "no trial reported the objective", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path)


def mean_and_std(rows: Sequence[Row], columns: Sequence[str]) -> dict[str, tuple[float, float, int]]:
    """Mean, sample standard deviation and count of each numeric column over the rows that have it: the
    cross-validation summary of a ``-m data.fold=0,1,2,3,4`` sweep (or of repeated seeds)."""
    out = {}
    for column in columns:
        values = [float(r[column]) for r in rows if is_number(r.get(column))]
        if len(values) >= 2:
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
            out[column] = (mean, std, len(values))
    return out


def best_row(rows: Sequence[Row], key: str, maximize: bool, state: str | None = None) -> Row | None:
    """The best complete row by ``key``, or None."""
    candidates = [r for r in rows if is_number(r.get(key)) and (state is None or r.get(state, "COMPLETE") == "COMPLETE")]
    return rank(candidates, key, maximize)[0] if candidates else None



def plot_ranked(rows: Sequence[Row], label: str, value: str, title: str, path: Path, top: int = 25) -> None:
    """Horizontal bars of ``value`` for the first ``top`` rows (already ranked), best at the top."""
    from matplotlib.figure import Figure

    shown = [r for r in rows if is_number(r.get(value))][:top]
    fig = Figure(figsize=(8, 1.5 + 0.3 * max(len(shown), 1)), dpi=100)
    ax = fig.subplots()
    ax.barh([str(r.get(label))[:60] for r in shown][::-1], [r[value] for r in shown][::-1])
    ax.set_xlabel(value)
    ax.set_title(title)
    if not shown:
        ax.text(0.5, 0.5, f"no run has {value}", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path)
