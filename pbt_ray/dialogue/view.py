"""Human-readable views of one dialogue tree: an indented terminal rendering and a standalone HTML page.

Both views walk the tree depth-first (children in id order under their parent), so a reader can follow
each branch of the persuasion dialogue from the first turn to the point where the agents agreed or the
tree reached full depth. Neither view assumes a well-formed tree: empty trees, failed trees, missing
answers, empty texts, unknown families and dangling parents all render.
"""

from __future__ import annotations

import html
import textwrap

from pbt_ray.dialogue.prompts import FAMILY_NAMES
from pbt_ray.dialogue.tree import Node, Tree

__all__ = ["FAMILY_NAMES", "render_text", "render_html"]

_MARKS = {True: "✓", False: "✗", None: "?"}
_AGREED = "AGREED — branch stops"


# ---- shared helpers ------------------------------------------------------------------------------


def _family_name(family: str | None) -> str:
    if not family:
        return "?"
    return FAMILY_NAMES.get(family, family)


def _answer_phrase(node: Node) -> str:
    """What the turn said about the answer, without the correctness mark: "answer: paris", "agrees → paris";
    with the instrument's step that read it ("read by rule") where the tree records one."""
    phrase = _answer_words(node)
    return f"{phrase} (read by {node.read_by})" if getattr(node, "read_by", None) else phrase


def _answer_words(node: Node) -> str:
    answer = node.answer if node.answer not in (None, "") else None
    shown = answer if answer is not None else "—"
    outcome = node.outcome or "none"
    if outcome == "agree":
        return f"agrees → {shown}"
    if outcome == "disagree":
        return f"disagrees → {shown}"
    if outcome == "answer":
        return f"answer: {shown}"
    # "none" (or anything unexpected): the extractor found no answer in this turn.
    return "no answer" if answer is None else f"no answer → {answer}"


def _ordered(tree: Tree) -> list[tuple[Node, int, list[bool]]]:
    """Depth-first (node, level, ancestors_last) triples; children in id order; never loops.

    ``ancestors_last[i]`` says whether the ancestor at display level ``i + 1`` was the last of its
    siblings (used for the tree-drawing glyphs). Nodes whose parent is missing are shown as roots.
    """
    nodes = list(tree.nodes or [])
    ids = {n.id for n in nodes}
    kids: dict[int, list[Node]] = {}
    roots: list[Node] = []
    for n in nodes:
        if n.parent == -1 or n.parent not in ids or n.parent == n.id:
            roots.append(n)
        else:
            kids.setdefault(n.parent, []).append(n)
    for siblings in kids.values():
        siblings.sort(key=lambda n: n.id)
    roots.sort(key=lambda n: n.id)

    out: list[tuple[Node, int, list[bool]]] = []
    seen: set[int] = set()

    def walk(node: Node, level: int, lasts: list[bool]) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        out.append((node, level, lasts))
        children = kids.get(node.id, [])
        for i, child in enumerate(children):
            walk(child, level + 1, lasts + [i == len(children) - 1])

    for root in roots:
        walk(root, 0, [])
    # Anything unreachable (a parent cycle) still gets shown, as a root.
    for n in sorted(nodes, key=lambda n: n.id):
        if id(n) not in seen:
            walk(n, 0, [])
    return out


def _speaker_roles(tree: Tree) -> dict[str, str]:
    """{"A": "persuadee", "B": "persuader"} from the tree's role -> speaker map."""
    out: dict[str, str] = {}
    for role, speaker in (tree.roles or {}).items():
        if speaker is not None:
            out.setdefault(str(speaker), str(role))
    return out


def _models_line(tree: Tree) -> list[tuple[str, str, str | None]]:
    """(who, model, role) triples: A and B first, then any other entry (the extractor)."""
    models = dict(tree.models or {})
    roles = _speaker_roles(tree)
    speakers = ["A", "B"] + sorted(k for k in set(models) | set(roles) if k not in ("A", "B"))
    out = []
    for who in speakers:
        if who not in models and who not in roles:
            if who in ("A", "B"):
                out.append((who, "?", None))
            continue
        out.append((who, str(models.get(who) or "?"), roles.get(who)))
    return out


def _tokens_summary(tree: Tree) -> str:
    parts = [f"{tree.generated_tokens or 0} generated tokens", f"{tree.requests or 0} requests"]
    if tree.seconds:
        parts.append(f"{tree.seconds:.1f} s")
    return ", ".join(parts)


def _depth_summary(tree: Tree) -> str:
    try:
        counts = tree.depth_counts()
    except Exception:  # noqa: BLE001 - a view must not crash on odd data
        return ""
    return " + ".join(str(c) for c in counts)


# ---- text ----------------------------------------------------------------------------------------

_RESET = "\x1b[0m"
_STYLES = {
    "bold": "\x1b[1m",
    "dim": "\x1b[2m",
    "green": "\x1b[32m",
    "red": "\x1b[31m",
    "yellow": "\x1b[33m",
    "cyan": "\x1b[36m",
    "magenta": "\x1b[35m",
    "blue": "\x1b[34m",
}


def render_text(tree: Tree, *, color: bool = False, width: int = 100) -> str:
    """The tree as indented plain text (ANSI colors only when ``color`` is true), one turn per block.

    Each turn shows ``[id] speaker (role, family)``, its answer with a ✓/✗/? correctness mark, an
    "AGREED — branch stops" marker where the agents agreed, and its text wrapped to ``width`` columns.
    """

    def paint(s: str, *styles: str) -> str:
        if not color or not s:
            return s
        return "".join(_STYLES[x] for x in styles) + s + _RESET

    def mark(correct: bool | None) -> str:
        symbol = _MARKS.get(correct, "?")
        return paint(symbol, "bold", {True: "green", False: "red"}.get(correct, "yellow"))

    width = max(int(width or 0), 20)
    lines: list[str] = []

    # Header.
    lines.append(paint("Question: ", "bold") + (tree.question or "(no question)"))
    if tree.choices:
        lines.append(paint("Choices:  ", "bold") + "  ".join(f"({k}) {v}" for k, v in tree.choices.items()))
    gold = [str(g) for g in (tree.gold or [])]
    lines.append(paint("Gold:     ", "bold") + (" | ".join(gold) if gold else "(none)"))
    ident = f"question {tree.question_id or '?'} · tree {tree.tree_id or '?'} · mode {tree.mode or '?'} · seed {tree.seed}"
    if tree.source:
        ident += f" · source {tree.source}"
    lines.append(paint("Id:       ", "bold") + ident)
    models = []
    for who, model, role in _models_line(tree):
        who_s = paint(who, "bold")
        models.append(f"{who_s} = {model}" + (f" ({role})" if role else ""))
    lines.append(paint("Models:   ", "bold") + " · ".join(models))
    status = tree.status or "?"
    status_s = paint(status, "bold", "red" if status == "failed" else "green")
    lines.append(paint("Status:   ", "bold") + status_s)
    if tree.error:
        error_lines = str(tree.error).splitlines() or [""]
        lines.append(paint("Error:    ", "bold") + paint(error_lines[0], "red"))
        lines.extend(" " * 10 + paint(rest, "red") for rest in error_lines[1:])
    n_nodes = len(tree.nodes or [])
    depth = _depth_summary(tree)
    lines.append(
        paint("Nodes:    ", "bold") + f"{n_nodes}" + (f" ({depth} by depth)" if depth and n_nodes else "")
        + " · " + _tokens_summary(tree)
    )
    lines.append(paint("─" * min(width, 80), "dim"))

    ordered = _ordered(tree)
    if not ordered:
        lines.append(paint("(no turns)", "dim"))
        return "\n".join(lines) + "\n"

    for index, (node, level, lasts) in enumerate(ordered):
        # Glyph prefix for this node's header, and the prefix its text / descendants continue with.
        stem = "".join("   " if last else "│  " for last in lasts[:-1])
        head_prefix = stem + (("└─ " if lasts[-1] else "├─ ") if lasts else "")
        cont = stem + (("   " if lasts[-1] else "│  ") if lasts else "")
        has_children = index + 1 < len(ordered) and ordered[index + 1][1] > level
        body_prefix = cont + ("│  " if has_children else "   ")

        role = node.role or "?"
        family = _family_name(node.family)
        speaker = paint(f"{node.speaker or '?'}", "bold", "cyan" if node.speaker == "A" else "magenta")
        header = f"{paint(f'[{node.id}]', 'dim')} {speaker} ({role}, {family})  {_answer_phrase(node)} {mark(node.correct)}"
        if node.agree:
            header += "  " + paint(_AGREED, "bold", "yellow")
        if node.finish_reason == "length":
            header += "  " + paint("[truncated]", "red")
        lines.append(head_prefix + header)

        text = (node.text or "").strip()
        avail = max(width - len(body_prefix), 20)
        if not text:
            lines.append(body_prefix + paint("(empty)", "dim"))
        else:
            blank = False
            for para in text.splitlines():
                if not para.strip():
                    if not blank:
                        lines.append(body_prefix.rstrip())
                    blank = True
                    continue
                blank = False
                for row in textwrap.wrap(para, width=avail, break_long_words=True, replace_whitespace=True) or [""]:
                    lines.append(body_prefix + paint(row, "dim"))
        # A spacer line that keeps the guide lines of the branches still open.
        lines.append((body_prefix if has_children else cont).rstrip())

    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines) + "\n"


# ---- html ----------------------------------------------------------------------------------------

_CSS = """
:root {
  --fg: #1f2430; --muted: #6b7280; --line: #d9dde5; --bg: #f6f7f9; --card: #ffffff;
  --ok: #15803d; --ok-bg: #dcfce7; --bad: #b91c1c; --bad-bg: #fee2e2; --unk: #6b7280; --unk-bg: #eceef2;
  --a: #1d4ed8; --a-bg: #dbeafe; --b: #7e22ce; --b-bg: #f3e8ff; --agree: #92400e; --agree-bg: #fef3c7;
}
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px 48px; background: var(--bg); color: var(--fg);
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
header.tree-head { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 16px 20px; margin-bottom: 14px; }
header.tree-head h1 { font-size: 18px; margin: 0 0 10px; line-height: 1.35; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 4px 14px; margin: 0; }
dl.meta dt { color: var(--muted); font-weight: 600; }
dl.meta dd { margin: 0; }
.gold { display: inline-block; background: var(--ok-bg); color: var(--ok); border-radius: 4px;
  padding: 0 6px; margin: 0 4px 2px 0; font-weight: 600; }
code, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono", monospace; font-size: 12.5px; }
.status-complete { color: var(--ok); font-weight: 700; }
.status-failed { color: var(--bad); font-weight: 700; }
.error { margin-top: 10px; background: var(--bad-bg); color: var(--bad); border-radius: 6px; padding: 8px 12px;
  white-space: pre-wrap; font-family: ui-monospace, Menlo, Consolas, "DejaVu Sans Mono", monospace; font-size: 12.5px; }
.legend { display: flex; flex-wrap: wrap; gap: 8px 16px; align-items: center; color: var(--muted);
  font-size: 12.5px; margin: 0 0 16px 2px; }
.legend span.item { display: inline-flex; align-items: center; gap: 5px; }
ul.tree, ul.tree ul { list-style: none; margin: 0; padding: 0; }
ul.tree ul { margin-left: 14px; padding-left: 16px; border-left: 2px solid var(--line); }
ul.tree li { margin: 8px 0; }
details.turn { background: var(--card); border: 1px solid var(--line); border-radius: 8px; }
details.turn > summary { cursor: pointer; padding: 7px 12px; display: flex; flex-wrap: wrap; gap: 6px;
  align-items: center; list-style: none; }
details.turn > summary::-webkit-details-marker { display: none; }
details.turn > summary::before { content: "▸"; color: var(--muted); width: 10px; display: inline-block; }
details.turn[open] > summary::before { content: "▾"; }
details.turn.agreed { border-color: #f5c26b; box-shadow: inset 3px 0 0 #f59e0b; }
.nid { color: var(--muted); font-family: ui-monospace, Menlo, Consolas, "DejaVu Sans Mono", monospace; font-size: 12px; }
.chip { display: inline-block; border-radius: 999px; padding: 1px 9px; font-size: 12px; line-height: 18px;
  border: 1px solid var(--line); color: var(--muted); background: #fafbfc; white-space: nowrap; }
.chip.spk-A { background: var(--a-bg); color: var(--a); border-color: transparent; font-weight: 700; }
.chip.spk-B { background: var(--b-bg); color: var(--b); border-color: transparent; font-weight: 700; }
.chip.spk-other { background: var(--unk-bg); color: var(--fg); border-color: transparent; font-weight: 700; }
.chip.fam { font-style: italic; }
.ans { margin-left: 4px; }
.ans .verb { color: var(--muted); }
.ans b { font-weight: 600; }
.badge { display: inline-block; min-width: 22px; text-align: center; border-radius: 5px; padding: 0 6px;
  font-weight: 700; font-size: 12.5px; line-height: 20px; }
.badge.ok { background: var(--ok-bg); color: var(--ok); }
.badge.bad { background: var(--bad-bg); color: var(--bad); }
.badge.unk { background: var(--unk-bg); color: var(--unk); }
.agree { display: inline-block; background: var(--agree-bg); color: var(--agree); border-radius: 5px;
  padding: 0 8px; font-size: 12px; font-weight: 700; line-height: 20px; letter-spacing: .02em; }
.trunc { display: inline-block; background: var(--bad-bg); color: var(--bad); border-radius: 5px; padding: 0 6px;
  font-size: 11.5px; line-height: 20px; }
.toks { color: var(--muted); font-size: 12px; margin-left: auto; }
.text { border-top: 1px solid var(--line); padding: 9px 14px 11px; white-space: pre-wrap; overflow-wrap: anywhere;
  color: #374151; }
.text.empty { color: var(--muted); font-style: italic; }
.empty-tree { color: var(--muted); font-style: italic; padding: 12px 4px; }
"""


def _badge(correct: bool | None) -> str:
    cls = {True: "ok", False: "bad"}.get(correct, "unk")
    title = {True: "correct", False: "incorrect"}.get(correct, "not judged / no answer")
    return f'<span class="badge {cls}" title="{title}">{_MARKS.get(correct, "?")}</span>'


def _answer_html(node: Node) -> str:
    esc = html.escape
    answer = node.answer if node.answer not in (None, "") else None
    value = f"<b>{esc(answer)}</b>" if answer is not None else "<b>—</b>"
    outcome = node.outcome or "none"
    if outcome == "agree":
        inner = f'<span class="verb">agrees →</span> {value}'
    elif outcome == "disagree":
        inner = f'<span class="verb">disagrees →</span> {value}'
    elif outcome == "answer":
        inner = f'<span class="verb">answer:</span> {value}'
    else:
        inner = '<span class="verb">no answer</span>' + (f' <span class="verb">→</span> {value}' if answer else "")
    raw = f' title="raw: {esc(node.raw_answer, quote=True)}"' if node.raw_answer else ""
    return f'<span class="ans"{raw}>{inner}</span>'


def _node_html(node: Node, kids: dict[int, list[Node]], seen: set[int], out: list[str], indent: int) -> None:
    esc = html.escape
    pad = "  " * indent
    seen.add(id(node))
    speaker = node.speaker or "?"
    spk_cls = f"spk-{speaker}" if speaker in ("A", "B") else "spk-other"
    agreed = " agreed" if node.agree else ""
    summary = [
        f'<span class="nid">[{esc(str(node.id))}]</span>',
        f'<span class="chip {spk_cls}">{esc(speaker)}</span>',
        f'<span class="chip role">{esc(node.role or "?")}</span>',
        f'<span class="chip fam" title="family {esc(node.family or "?")}">{esc(_family_name(node.family))}</span>',
        _answer_html(node),
        _badge(node.correct),
    ]
    if node.agree:
        summary.append(f'<span class="agree">{_AGREED}</span>')
    if node.finish_reason == "length":
        summary.append('<span class="trunc">truncated</span>')
    if node.completion_tokens:
        summary.append(f'<span class="toks">{int(node.completion_tokens)} tok</span>')
    text = (node.text or "").strip()
    body = (f'<div class="text">{esc(text)}</div>' if text else '<div class="text empty">(empty)</div>')
    out.append(f'{pad}<li id="n{esc(str(node.id))}">')
    out.append(f'{pad}  <details class="turn{agreed}" open>')
    out.append(f'{pad}    <summary>{" ".join(summary)}</summary>')
    out.append(f"{pad}    {body}")
    out.append(f"{pad}  </details>")
    children = [c for c in kids.get(node.id, []) if id(c) not in seen]
    if children:
        out.append(f'{pad}  <ul>')
        for child in children:
            _node_html(child, kids, seen, out, indent + 2)
        out.append(f"{pad}  </ul>")
    out.append(f"{pad}</li>")


def render_html(tree: Tree) -> str:
    """The tree as one self-contained HTML5 page (inline CSS, no scripts, no external resources)."""
    esc = html.escape
    question = tree.question or "(no question)"
    gold = [str(g) for g in (tree.gold or [])]
    status = tree.status or "?"

    meta: list[tuple[str, str]] = []
    if tree.choices:
        meta.append(("Choices", " ".join(
            f'<span class="chip">({esc(str(k))}) {esc(str(v))}</span>' for k, v in tree.choices.items())))
    meta.append(("Gold", "".join(f'<span class="gold">{esc(g)}</span>' for g in gold) or "<i>none</i>"))
    ident = (f'question <code>{esc(str(tree.question_id or "?"))}</code> · tree <code>{esc(str(tree.tree_id or "?"))}</code>'
             f' · mode <b>{esc(str(tree.mode or "?"))}</b> · seed {esc(str(tree.seed))}')
    if tree.source:
        ident += f" · source {esc(str(tree.source))}"
    meta.append(("Ids", ident))
    models = []
    for who, model, role in _models_line(tree):
        cls = f"spk-{who}" if who in ("A", "B") else "spk-other"
        models.append(f'<span class="chip {cls}">{esc(who)}</span> <code>{esc(model)}</code>'
                      + (f' <span class="chip role">{esc(role)}</span>' if role else ""))
    meta.append(("Models", " &nbsp;·&nbsp; ".join(models)))
    meta.append(("Status", f'<span class="status-{esc(status)}">{esc(status)}</span>'))
    n_nodes = len(tree.nodes or [])
    depth = _depth_summary(tree)
    meta.append(("Turns", f"{n_nodes}" + (f" ({esc(depth)} by depth)" if depth and n_nodes else "")))
    meta.append(("Tokens", esc(_tokens_summary(tree))))

    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Dialogue tree · {esc(question[:80])}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        '<header class="tree-head">',
        f"  <h1>{esc(question)}</h1>",
        '  <dl class="meta">',
    ]
    for key, value in meta:
        out.append(f"    <dt>{key}</dt><dd>{value}</dd>")
    out.append("  </dl>")
    if tree.error:
        out.append(f'  <div class="error">{esc(str(tree.error))}</div>')
    out.append("</header>")
    out.append(
        '<div class="legend">'
        f'<span class="item">{_badge(True)} correct</span>'
        f'<span class="item">{_badge(False)} incorrect</span>'
        f'<span class="item">{_badge(None)} no answer / not judged</span>'
        f'<span class="item"><span class="agree">{_AGREED}</span> both agents agree after this turn</span>'
        '<span class="item"><span class="chip spk-A">A</span><span class="chip spk-B">B</span> speaker</span>'
        '<span class="item"><span class="chip role">role</span><span class="chip fam">prompt family</span></span>'
        "</div>"
    )

    ordered = _ordered(tree)
    if not ordered:
        out.append('<main><p class="empty-tree">No turns in this tree.</p></main>')
    else:
        kids: dict[int, list[Node]] = {}
        roots = [node for node, level, _ in ordered if level == 0]
        # Rebuild the parent -> children lists from the traversal so odd parents render exactly as in text.
        stack: list[tuple[Node, int]] = []
        for node, level, _ in ordered:
            while stack and stack[-1][1] >= level:
                stack.pop()
            if stack:
                kids.setdefault(stack[-1][0].id, []).append(node)
            stack.append((node, level))
        out.append('<main>\n<ul class="tree">')
        seen: set[int] = set()
        for root in roots:
            _node_html(root, kids, seen, out, 1)
        out.append("</ul>\n</main>")
    out.append("</body>")
    out.append("</html>")
    return "\n".join(out) + "\n"
