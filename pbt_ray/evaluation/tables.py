"""A report any recipe fills: sections of tables whose cells are estimates with n and 95% intervals, as
``report/report.json`` and one self-contained ``report/report.html`` (plots inlined as PNG).

A section is ``{"title", "note", "columns": [...], "rows": [{"label", "cells": {column: cell}}]}``; a cell is an
estimate ``{"value", "ci95", "n"}`` (shown as ``0.62 [0.41, 0.79] n=16``, or why there is no interval), a number or
a text. PBT's report (:mod:`pbt_ray.evaluation.report`) has its own richer layout; a new recipe needs only this.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;
text-align:left;vertical-align:top}td:first-child{white-space:nowrap}th{background:#f3f3f3}td.num{min-width:9em}.note{color:#555;max-width:900px}
img{max-width:100%}"""


def estimate(value: float | None, ci95: list[float] | None, n: int, **extra: Any) -> dict[str, Any]:
    return {"value": value, "ci95": ci95, "n": n, **extra}


def from_proportion(p: dict[str, Any]) -> dict[str, Any]:
    """A :func:`pbt_ray.stats.proportion` result as a cell."""
    return estimate(p.get("accuracy"), p.get("ci95"), p.get("n", 0))


def format_cell(cell: Any) -> str:
    if isinstance(cell, dict) and "n" in cell and "value" in cell:
        if cell["value"] is None:
            return f"n/a (n={cell['n']})"
        text = f"{cell['value']:.3f}"
        text += f" [{cell['ci95'][0]:.3f}, {cell['ci95'][1]:.3f}]" if cell.get("ci95") else " (no interval)"
        text += f" n={cell['n']}"
        if cell.get("p_value") is not None:
            text += f", p={cell['p_value']:.3g}"
        return text
    if isinstance(cell, float):
        return f"{cell:.3f}"
    return "" if cell is None else str(cell)


def _plot(section: dict[str, Any]) -> str | None:
    cols = [c for c in section["columns"] if any(isinstance(r["cells"].get(c), dict) and
                                                 r["cells"][c].get("value") is not None for r in section["rows"])]
    if not cols or not section["rows"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(cols), 3.2))
    width = 0.8 / len(section["rows"])
    for i, row in enumerate(section["rows"]):
        xs, ys, lo, hi = [], [], [], []
        for j, col in enumerate(cols):
            cell = row["cells"].get(col)
            if isinstance(cell, dict) and cell.get("value") is not None:
                xs.append(j + i * width)
                ys.append(cell["value"])
                ci = cell.get("ci95") or [cell["value"], cell["value"]]
                lo.append(cell["value"] - ci[0])
                hi.append(ci[1] - cell["value"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=row["label"])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cols))], cols, fontsize=8)
    ax.set_title(section["title"], fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _cls(cell: Any) -> str:
    return " class='num'" if isinstance(cell, dict) else ""  # an estimate stays on one line; text wraps


def render_html(title: str, sections: list[dict[str, Any]], notes: list[str]) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in notes]
    for section in sections:
        parts.append(f"<h2>{html.escape(section['title'])}</h2>")
        if section.get("note"):
            parts.append(f"<p class='note'>{html.escape(section['note'])}</p>")
        head = "".join(f"<th>{html.escape(c)}</th>" for c in section["columns"])
        body = "".join("<tr><td>" + html.escape(r["label"]) + "</td>" + "".join(
            f"<td{_cls(r['cells'].get(c))}>{html.escape(format_cell(r['cells'].get(c)))}</td>" for c in section["columns"])
            + "</tr>" for r in section["rows"])
        parts.append(f"<table><tr><th></th>{head}</tr>{body}</table>")
        png = _plot(section) if section.get("plot", True) else None
        if png:
            parts.append(f"<img alt='{html.escape(section['title'])}' src='data:image/png;base64,{png}'>")
    parts.append("</body></html>")
    return "".join(parts)


def write_tables_report(run_dir: str | Path, title: str, sections: list[dict[str, Any]], notes: list[str] = (),
                        extra: dict[str, Any] | None = None) -> Path:
    out = Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    data = {"title": title, "notes": list(notes), "sections": sections, **(extra or {})}
    (out / "report.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (out / "report.html").write_text(render_html(title, sections, list(notes)))
    return out / "report.html"
