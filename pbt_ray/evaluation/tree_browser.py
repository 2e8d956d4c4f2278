"""The tree browser: every tree of a run on one page (search by question text; filter by round, status, the
pairs a tree gave and whether a branch ended in agreement), each opening as the tree viewer's page.

``report/trees/index.html`` holds the trees' summaries as JSON and a few lines of script that filter the table;
``report/trees/<tree>.html`` is :func:`pbt_ray.dialogue.view.render_html` of each tree. Static files: it opens
from disk, from object storage or behind any web server.
"""

from __future__ import annotations

import html
import json
import re
from collections import Counter
from pathlib import Path

from pbt_ray.evaluation.run_sections import rounds

SCRIPT = """
const rows = JSON.parse(document.getElementById('trees').textContent);
const body = document.querySelector('#list tbody');
const fields = ['q', 'round', 'status', 'pair', 'agreed'].map(id => document.getElementById(id));
function show() {
  const [q, round, status, pair, agreed] = fields.map(f => f.value.toLowerCase());
  const shown = rows.filter(r => (!q || (r.question + ' ' + r.question_id).toLowerCase().includes(q))
    && (!round || r.round === round) && (!status || r.status === status)
    && (!pair || (pair === 'none' ? r.pairs.length === 0 : r.pairs.includes(pair)))
    && (!agreed || String(r.agreed) === agreed));
  body.innerHTML = shown.map(r => `<tr><td><a href="${r.page}">${r.esc_id}</a></td><td>${r.round}</td>`
    + `<td class="q">${r.esc_question}</td><td>${r.esc_gold}</td><td>${r.status}</td><td>${r.turns}</td>`
    + `<td>${r.none}</td><td>${r.agreed ? 'yes' : 'no'}</td><td>${r.pairs.join(', ') || '-'}</td></tr>`).join('');
  document.getElementById('count').textContent = `${shown.length} of ${rows.length} trees`;
}
fields.forEach(f => f.addEventListener('input', show));
show();
"""


def _page_name(round_name: str, tree_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{round_name.replace(' ', '-')}-{tree_id}") + ".html"


def _pairs_by_tree(directory: Path) -> dict[str, list[str]]:
    path = directory / "preferences" / "candidates.parquet"
    if not path.is_file():
        return {}
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path, columns=["tree_id", "type"]).to_pylist()
    except Exception:  # noqa: BLE001 - a broken candidates file: the browser still lists the trees
        return {}
    found: dict[str, Counter] = {}
    for row in rows:
        found.setdefault(row["tree_id"], Counter())[row["type"]] += 1
    return {tree: sorted(counts) for tree, counts in found.items()}


def tree_rows(run_dir: Path) -> list[tuple[dict, object]]:
    """(summary row, tree) of every tree of every round."""
    from pbt_ray.dialogue.pipeline import read_trees

    out = []
    for round_name, directory in rounds(run_dir):
        if not (directory / "trees").is_dir():
            continue
        pairs = _pairs_by_tree(directory)
        for tree in read_trees(directory):
            esc = html.escape
            row = {"round": round_name, "tree_id": tree.tree_id, "question_id": tree.question_id,
                   "question": tree.question or "", "gold": list(tree.gold or []), "status": tree.status or "?",
                   "turns": len(tree.nodes), "none": sum(1 for n in tree.nodes if n.outcome == "none"),
                   "agreed": any(n.agree for n in tree.nodes), "pairs": pairs.get(tree.tree_id, []),
                   "page": _page_name(round_name, tree.tree_id)}
            row.update(esc_id=esc(tree.tree_id), esc_question=esc(row["question"]), esc_gold=esc(" / ".join(row["gold"])))
            out.append((row, tree))
    return sorted(out, key=lambda rt: (rt[0]["round"], rt[0]["question_id"], rt[0]["tree_id"]))


def write_tree_browser(run_dir: str | Path, out: str | Path) -> int:
    """Write the browser into ``out``; returns the number of trees (0: nothing written)."""
    from pbt_ray.dialogue.view import render_html

    rows = tree_rows(Path(run_dir))
    if not rows:
        return 0
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for row, tree in rows:
        (out / row["page"]).write_text(render_html(tree))
    summaries = [row for row, _ in rows]

    def options(key: str, values) -> str:
        return f"<option value=''>{key}: all</option>" + "".join(
            f"<option value='{html.escape(str(v).lower())}'>{html.escape(str(v))}</option>" for v in values)

    pair_types = sorted({p for r in summaries for p in r["pairs"]}) + ["none"]
    page = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Trees</title><style>"
        "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}table{border-collapse:collapse;width:100%}"
        "td,th{border:1px solid #ddd;padding:.25rem .5rem;font-size:.9em;text-align:left}th{background:#f4f4f4}"
        "td.q{max-width:40rem}.bar{display:flex;gap:.5rem;flex-wrap:wrap;margin:.8rem 0}input{min-width:20rem}"
        "</style></head><body>",
        f"<h1>Trees of {html.escape(Path(run_dir).name)}</h1><p><a href='../report.html'>back to the report</a></p>",
        "<div class='bar'><input id='q' placeholder='search the question text or id'>",
        f"<select id='round'>{options('round', sorted({r['round'] for r in summaries}))}</select>",
        f"<select id='status'>{options('status', sorted({r['status'] for r in summaries}))}</select>",
        f"<select id='pair'>{options('pairs', pair_types)}</select>",
        f"<select id='agreed'>{options('agreement', ['true', 'false'])}</select>",
        "<span id='count'></span></div>",
        "<table id='list'><thead><tr><th>tree</th><th>round</th><th>question</th><th>gold</th><th>status</th>"
        "<th>turns</th><th>NONE</th><th>agreed</th><th>pairs</th></tr></thead><tbody></tbody></table>",
        # "</" escaped as "<\/" (still JSON), so no question text can close the script element.
        "<script id='trees' type='application/json'>" + json.dumps(summaries).replace("</", "<\\/") + "</script>",
        f"<script>{SCRIPT}</script></body></html>",
    ]
    (out / "index.html").write_text("\n".join(page))
    return len(rows)
