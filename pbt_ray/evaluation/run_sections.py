"""The report's pictures of what came before the evaluations: what grow and mine produced, and how training went.

Read from the files the stages leave in each round's directory (``grow_summary.json``,
``preferences/mine_stats.json``, ``adapter/train_log.json``, ``train_metrics.json``, ``loop_state.json``), so a
report can be written for any run, finished or not; a round that trained no model says why.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

PAIR_TYPES = ("resist", "accept", "third_answer", "alias_mismatch")
CURVES = (("loss", "DPO loss"), ("rewards/margins", "reward margin"), ("rewards/accuracies", "reward accuracy"),
          ("eval_balanced_accuracy", "dev balanced accuracy"))


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def rounds(run_dir: Path) -> list[tuple[str, Path]]:
    """(name, directory) of every round: the run directory itself, then round-2, round-3, ..."""
    found = [(int(m.group(1)), p) for p in run_dir.glob("round-*") if (m := re.fullmatch(r"round-(\d+)", p.name))]
    return [("round 1", run_dir)] + [(f"round {k}", p) for k, p in sorted(found)]


def round_facts(directory: Path) -> dict[str, Any]:
    """What one round's grow, mine and train left: {grow, mine, train: {...} | None, train_skipped: str | None}."""
    grow = _load(directory / "grow_summary.json")
    mine = _load(directory / "preferences" / "mine_stats.json")
    log = _load(directory / "adapter" / "train_log.json")
    metrics = _load(directory / "train_metrics.json")
    state = (_load(directory / "loop_state.json") or {}).get("stages", {})
    train = None
    if isinstance(log, list):
        steps = [e for e in log if isinstance(e, dict) and "step" in e]
        train = {"run_name": (metrics or {}).get("run_name"), "global_step": (metrics or {}).get("global_step"),
                 "curves": {key: [(e["step"], e[key]) for e in steps if isinstance(e.get(key), (int, float))]
                            for key, _ in CURVES}}
    skipped = (state.get("train", {}).get("info") or {}).get("skipped")
    return {"grow": grow, "mine": mine, "train": train, "train_skipped": skipped}


def facts(run_dir: Path) -> dict[str, dict[str, Any]]:
    return {name: round_facts(directory) for name, directory in rounds(run_dir)
            if (directory / "grow_summary.json").is_file() or (directory / "preferences").is_dir()}


def data_plot(name: str, f: dict[str, Any], pyplot) -> Any:
    """Pairs by type, resist/accept by persuasion style and by reply depth: one figure of three panels."""
    mine = f.get("mine") or {}
    if not mine.get("pairs_by_type"):
        return None
    fig, axes = pyplot.subplots(1, 3, figsize=(11, 2.8))
    by_type = mine["pairs_by_type"]
    types = [t for t in PAIR_TYPES if t in by_type] + sorted(set(by_type) - set(PAIR_TYPES))
    axes[0].bar(types, [by_type[t] for t in types], color="#4c72b0")
    axes[0].set_title("pairs by type")
    for ax, key, title in ((axes[1], "pairs_by_style", "by persuasion style"), (axes[2], "pairs_by_depth", "by reply depth")):
        groups = sorted(mine.get(key) or {}, key=lambda g: (len(g), g))
        for offset, (kind, color) in enumerate((("resist", "#dd8452"), ("accept", "#55a868"))):
            ax.bar([i + 0.4 * offset for i in range(len(groups))], [(mine[key][g] or {}).get(kind, 0) for g in groups],
                   width=0.4, color=color, label=kind)
        ax.set_xticks([i + 0.2 for i in range(len(groups))], groups)
        ax.set_title(f"resist / accept {title}")
        ax.legend(fontsize=8)
    for ax in axes:
        ax.tick_params(labelsize=8)
    fig.suptitle(name, fontsize=10, y=1.06)
    return fig


def training_plot(name: str, f: dict[str, Any], pyplot) -> Any:
    train = f.get("train")
    if not train or not any(train["curves"].values()):
        return None
    shown = [(key, label) for key, label in CURVES if train["curves"].get(key)]
    fig, axes = pyplot.subplots(1, len(shown), figsize=(2.9 * len(shown), 2.6), squeeze=False)
    for ax, (key, label) in zip(axes[0], shown):
        points = train["curves"][key]
        ax.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=3)
        ax.set_title(f"{label} (n={len(points)})", fontsize=9)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.tick_params(labelsize=8)
    fig.suptitle(f"{name}: training ({train.get('run_name') or 'run'})", fontsize=10, y=1.08)
    return fig


def _ci(ci: Any) -> str:
    return f" [{ci[0]:.1%}, {ci[1]:.1%}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""


def sections_html(all_facts: dict[str, dict[str, Any]], figures: dict[str, str], trees_link: str | None) -> str:
    """The "Data" and "Training" sections: a table per round and the figures (PNG, base64) keyed
    ``data:<round>`` and ``train:<round>``."""
    esc = html.escape
    if not all_facts:
        return ""
    parts = ["<h2>Data: trees and pairs</h2>",
             "<table class='secondary'><tr><th>round</th><th>trees</th><th>failed</th><th>turns</th>"
             "<th>NONE rate [95% CI over trees]</th><th>candidates</th><th>resist</th><th>accept</th>"
             "<th>train pairs</th><th>dev</th><th>test</th></tr>"]
    for name, f in all_facts.items():
        g, m = f.get("grow") or {}, f.get("mine") or {}
        by_type, sel = m.get("pairs_by_type") or {}, m.get("selected") or {}
        none = f"{g['none_rate']:.1%}{_ci(g.get('none_rate_ci95'))} n={g.get('turns')}" if g.get("none_rate") is not None else "n/a"
        parts.append(f"<tr><td>{esc(name)}</td><td>{g.get('grown', 0) + g.get('already_done', 0)}</td>"
                     f"<td>{g.get('failed', 'n/a')}</td><td>{g.get('turns', 'n/a')}</td><td>{none}</td>"
                     f"<td>{m.get('candidates', 'n/a')}</td><td>{by_type.get('resist', 0)}</td>"
                     f"<td>{by_type.get('accept', 0)}</td>"
                     + "".join(f"<td>{sum((sel.get(s) or {}).values())}</td>" for s in ("train", "dev", "test")) + "</tr>")
    parts.append("</table>")
    if trees_link:
        parts.append(f"<p>Every tree of the run: <a href='{esc(trees_link)}'>the tree browser</a>.</p>")
    parts += [f"<img alt='data {esc(n)}' src='data:image/png;base64,{figures[f'data:{n}']}'>"
              for n in all_facts if f"data:{n}" in figures]
    parts.append("<h2>Training</h2>")
    for name, f in all_facts.items():
        train = f.get("train")
        if train:
            curves = train["curves"]
            last = {key: points[-1][1] for key, points in curves.items() if points}
            summary = ", ".join(f"{label} {last[key]:.3g}" for key, label in CURVES if key in last)
            parts.append(f"<p>{esc(name)}: run <code>{esc(str(train.get('run_name')))}</code>, "
                         f"{train.get('global_step')} optimizer steps; at the last logged step: {esc(summary)}.</p>")
            if f"train:{name}" in figures:
                parts.append(f"<img alt='training {esc(name)}' src='data:image/png;base64,{figures[f'train:{name}']}'>")
        else:
            why = f.get("train_skipped") or "no adapter in this round's directory"
            parts.append(f"<p class='na'>{esc(name)}: no model trained ({esc(why)}).</p>")
    return "\n".join(parts)
