"""The text and HTML views of a dialogue tree, on a small hand-built tree and on degenerate ones."""

import re

import pytest

from pbt_ray.dialogue.tree import Node, Tree
from pbt_ray.dialogue.view import FAMILY_NAMES, render_html, render_text

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _tree(nodes, **kw):
    base = dict(
        tree_id="t-1", question_id="q-42", question="What is the capital of France?", gold=["Paris", "paris"],
        mode="train", models={"A": "model-a", "B": "model-b", "extractor": "model-x"},
        roles={"persuader": "B", "persuadee": "A"}, seed=7, nodes=nodes, generated_tokens=321, requests=5,
    )
    base.update(kw)
    return Tree(**base)


def sample_tree() -> Tree:
    """A answers; B resists and agrees (branch stops); B accepts and disagrees; two persuasion turns under it."""
    return _tree([
        Node(0, -1, 0, "A", "independent", "sp", text="I think the answer is Paris.\n\nFinal Answer: Paris",
             raw_answer="Paris", outcome="answer", answer="paris", correct=True, completion_tokens=20),
        Node(1, 0, 1, "B", "persuader", "rp", text="You are right, it is Paris. I agree.",
             raw_answer="agree", outcome="agree", answer="paris", correct=True, agree=True),
        Node(2, 0, 1, "B", "persuader", "ap", text="No, it is Lyon. <script>alert('x')</script> " + "long " * 60,
             raw_answer="Lyon", outcome="answer", answer="lyon", correct=False),
        Node(3, 2, 2, "A", "persuadee", "lp", text="Logically, Paris hosts the government.",
             raw_answer="disagree", outcome="disagree", answer="paris", correct=True),
        Node(4, 2, 2, "A", "persuadee", "ep", text="", outcome="none", answer=None, correct=None),
    ])


def _header_line(text: str, node_id: int) -> str:
    return next(line for line in text.splitlines() if f"[{node_id}]" in line)


def test_text_shows_every_turn_header_and_marks():
    tree = sample_tree()
    out = render_text(tree, width=80)
    assert "What is the capital of France?" in out and "Paris | paris" in out and "q-42" in out
    assert "model-a" in out and "model-b" in out and "persuadee" in out and "persuader" in out
    assert "5" in out and "321" in out
    for node in tree.nodes:
        assert f"[{node.id}] {node.speaker} ({node.role}, {FAMILY_NAMES[node.family]})" in out
        for word in node.text.split():  # the wrapped text is all there, word by word
            assert word in out
    assert _header_line(out, 0).rstrip().endswith("answer: paris ✓")
    assert "agrees → paris ✓" in _header_line(out, 1)
    assert "answer: lyon ✗" in _header_line(out, 2)
    assert "disagrees → paris ✓" in _header_line(out, 3)
    assert "no answer ?" in _header_line(out, 4)
    assert "AGREED — branch stops" in _header_line(out, 1)
    assert sum("AGREED" in line for line in out.splitlines()) == 1
    assert "(empty)" in out


def test_text_indents_by_depth_and_orders_depth_first():
    out = render_text(sample_tree(), width=80)
    col = {i: _header_line(out, i).index(f"[{i}]") for i in range(5)}
    assert col[0] < col[1] == col[2] < col[3] == col[4]
    assert 2 <= col[1] - col[0] <= 4 and 2 <= col[3] - col[2] <= 4
    lines = out.splitlines()
    order = [next(k for k, line in enumerate(lines) if f"[{i}]" in line) for i in range(5)]
    assert order == sorted(order)  # 0, 1, 2, then 2's children 3 and 4


def test_text_wraps_to_width():
    out = render_text(sample_tree(), width=60)
    body = out.split("────", 1)[1]
    text_lines = [line for line in body.splitlines() if "[" not in line]
    assert text_lines and max(len(line) for line in text_lines) <= 60


def test_color_codes_only_when_asked():
    tree = sample_tree()
    plain = render_text(tree)
    colored = render_text(tree, color=True)
    assert "\x1b[" not in plain
    assert "\x1b[32m" in colored and "\x1b[31m" in colored  # green ✓, red ✗
    assert "\x1b[1m" in colored and "\x1b[2m" in colored  # bold speakers, dim text
    assert ANSI.sub("", colored) == plain


def test_html_is_a_full_escaped_document():
    tree = sample_tree()
    page = render_html(tree)
    assert page.lstrip().lower().startswith("<!doctype html>")
    for tag in ("<html", "<head>", "<meta charset=\"utf-8\">", "<style>", "<body>", "</body>", "</html>"):
        assert tag in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page
    assert "<link" not in page and "src=" not in page
    assert "What is the capital of France?" in page and "model-a" in page and "Paris" in page
    for node in tree.nodes:
        assert f'id="n{node.id}"' in page
    assert page.count("<details") == len(tree.nodes) and "open>" in page
    assert "AGREED — branch stops" in page
    assert 'class="badge ok"' in page and 'class="badge bad"' in page and 'class="badge unk"' in page
    assert "logical appeal" in page and "emotional appeal" in page and "resist" in page
    # Nesting: node 3 sits inside node 2's <li>, which closes after it.
    assert page.index('id="n2"') < page.index('id="n3"') < page.index('id="n4"')


def test_html_escapes_metadata_too():
    tree = sample_tree()
    tree.question = "Is <b>this</b> & that?"
    tree.error = "<img src=x onerror=alert(1)>"
    tree.status = "failed"
    page = render_html(tree)
    assert "<b>this</b>" not in page and "&lt;b&gt;this&lt;/b&gt; &amp; that?" in page
    assert "<img" not in page and "&lt;img" in page


@pytest.mark.parametrize("render", [render_text, render_html])
def test_empty_and_failed_trees_render(render):
    failed = _tree([], status="failed", error="engine crashed: CUDA OOM")
    out = render(failed)
    assert "failed" in out and "engine crashed: CUDA OOM" in out
    assert render(_tree([]))
    odd = _tree(
        [Node(0, -1, 0, "A", "independent", "zz", text="", answer=None, correct=None),
         Node(1, 0, 1, "B", "persuader", "unknown", text="   ", outcome="weird", answer=None),
         Node(2, 99, 1, "B", "persuader", "", text="orphan", answer="x", correct=False)],
        gold=[], models={}, roles={}, question="", choices={"A": "Paris", "B": "Lyon"},
    )
    out = render(odd)
    assert "orphan" in out and "zz" in out
    if render is render_text:
        assert "(B, ?)" not in out and "(persuader, ?)" in out


def test_failed_tree_text_header():
    out = render_text(_tree([], status="failed", error="boom"), color=False)
    assert "Status:" in out and "failed" in out and "Error:" in out and "boom" in out and "(no turns)" in out
