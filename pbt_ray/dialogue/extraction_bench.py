"""`pbt bench extract`: the answer instrument measured on labelled replies (docs/extraction.md).

A gold file holds one JSON object per line (the public contract, kept stable)::

    {"id": "...", "question": "...", "choices": {"A": "...", ...} (multiple choice only), "reply": "...",
     "expected": {"outcome": "answer" | "agree" | "disagree" | "none", "answers": [...]}}

``answers`` lists the acceptable readings of an ``answer`` outcome (free-form: answer strings; multiple
choice: labels). A reading is right when its outcome is the expected one and, for ``answer``, the text it
read matches one of ``answers`` under the project's one matching rule (:func:`pbt_ray.answers.is_correct`).
Every mode is run over the same items through :class:`pbt_ray.dialogue.extraction.Extractor`, the code
path of tree growth and of every evaluation, so the numbers are side by side in one run.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

from pbt_ray.answers import OUTCOMES, is_correct
from pbt_ray.dialogue.reading import Reading
from pbt_ray.stats import proportion

BUNDLED_GOLD = "bundled:extraction"


class GoldError(ValueError):
    """A gold file that cannot be read; the message names the file and line."""


def load_gold(source: str | Path) -> list[dict[str, Any]]:
    """Items of a gold file (``bundled:extraction`` is the set shipped with pbt-ray), validated."""
    if str(source) == BUNDLED_GOLD:
        text, origin = resources.files("pbt_ray.data").joinpath("extraction_gold.jsonl").read_text("utf-8"), BUNDLED_GOLD
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise GoldError(f"{path}: no such file (a JSONL file of labelled replies, docs/extraction.md)")
        text, origin = path.read_text("utf-8"), str(path)
    items, seen = [], set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{origin}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GoldError(f"{where}: not valid JSON ({exc.msg})") from None
        items.append(_validated(item, where, seen))
    if not items:
        raise GoldError(f"{origin}: no items")
    return items


def _validated(item: Any, where: str, seen: set) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise GoldError(f"{where}: each line must be a JSON object")
    for key in ("id", "question", "reply", "expected"):
        if key not in item:
            raise GoldError(f"{where}: missing '{key}'")
    if not isinstance(item["question"], str) or not isinstance(item["reply"], str):
        raise GoldError(f"{where}: 'question' and 'reply' must be strings")
    if item["id"] in seen:
        raise GoldError(f"{where}: duplicate id {item['id']!r}")
    seen.add(item["id"])
    choices = item.get("choices")
    if choices is not None and (not isinstance(choices, dict) or not choices
                                or not all(isinstance(k, str) and isinstance(v, str) for k, v in choices.items())):
        raise GoldError(f"{where}: 'choices' must be an object of label -> text")
    expected = item["expected"]
    if not isinstance(expected, dict) or expected.get("outcome") not in OUTCOMES:
        raise GoldError(f"{where}: expected.outcome must be one of {', '.join(OUTCOMES)}")
    answers = expected.get("answers", [])
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise GoldError(f"{where}: expected.answers must be a list of strings")
    if expected["outcome"] == "answer" and not answers:
        raise GoldError(f"{where}: an 'answer' outcome needs at least one acceptable answer")
    if choices and expected["outcome"] == "answer" and not set(answers) <= set(choices):
        raise GoldError(f"{where}: multiple-choice answers must be labels of 'choices' ({', '.join(choices)})")
    return {**item, "expected": {"outcome": expected["outcome"], "answers": answers}}


def kind(item: dict) -> str:
    return "multiple-choice" if item.get("choices") else "free-form"


def is_right(item: dict, reading: Reading) -> bool:
    expected = item["expected"]
    if reading.outcome != expected["outcome"]:
        return False
    return expected["outcome"] != "answer" or is_correct(reading.answer, expected["answers"], item.get("choices"))


def _severity(item: dict, reading: Reading) -> int:
    """Misreads that change a score most come first: a wrong answer, then a missed or invented answer."""
    expected = item["expected"]["outcome"]
    if expected == "answer" and reading.outcome == "answer":
        return 0
    return 1 if "answer" in (expected, reading.outcome) else 2


def summarize(items: list[dict], readings: list[Reading], worst: int = 10) -> dict[str, Any]:
    rights = [is_right(i, r) for i, r in zip(items, readings)]
    by_outcome, by_kind = {}, {}
    for outcome in OUTCOMES:
        picked = [ok for i, ok in zip(items, rights) if i["expected"]["outcome"] == outcome]
        by_outcome[outcome] = proportion(sum(picked), len(picked))
    for name in ("free-form", "multiple-choice"):
        picked = [ok for i, ok in zip(items, rights) if kind(i) == name]
        by_kind[name] = proportion(sum(picked), len(picked))
    confusion = {e: {o: 0 for o in OUTCOMES} for e in OUTCOMES}
    for item, reading in zip(items, readings):
        confusion[item["expected"]["outcome"]][reading.outcome] += 1
    records = [{"id": i["id"], "kind": kind(i), "question": i["question"], "reply": i["reply"],
                "expected": i["expected"], "read": {"outcome": r.outcome, "answer": r.answer, "read_by": r.method},
                "right": ok} for i, r, ok in zip(items, readings, rights)]
    misreads = sorted((rec for rec, i, r in zip(records, items, readings) if not rec["right"]),
                      key=lambda rec: _severity(rec, Reading(rec["read"]["outcome"], rec["read"]["answer"])))
    overall = proportion(sum(rights), len(rights))
    return {"n": overall["n"], "accuracy": overall["accuracy"], "ci95": overall["ci95"], "right": overall["right"],
            "per_outcome": by_outcome, "per_kind": by_kind, "confusion": confusion,
            "read_by": dict(Counter(r.method for r in readings)), "worst_misreads": misreads[:worst],
            "items": records}


async def measure(client, model: str, items: list[dict], modes: list[str], max_tokens: int = 24,
                  concurrency: int = 32) -> dict[str, dict[str, Any]]:
    """Every mode over the same items, one after the other on the same endpoint."""
    from pbt_ray.dialogue.extraction import Extractor

    results = {}
    for mode in modes:
        extractor = Extractor(client, model, mode, max_tokens)
        readings = await extractor.read_many([(i["question"], i["reply"], i.get("choices")) for i in items], concurrency)
        results[mode] = summarize(items, readings)
    return results


def _pct(p: dict) -> str:
    if p["accuracy"] is None:
        return "      -"
    low, high = p["ci95"]
    return f"{p['accuracy']:.3f} [{low:.2f}, {high:.2f}] (n={p['n']})"


def format_results(results: dict[str, dict[str, Any]], gold: str, model: str) -> str:
    modes = list(results)
    width = 30
    lines = [f"[pbt] bench extract: {gold}, extractor model {model}; accuracy [Wilson 95% interval] (n)", "",
             f"  {'':<22}" + "".join(f"{m:<{width}}" for m in modes)]
    rows = [("overall", lambda r: {"n": r["n"], "right": r["right"], "accuracy": r["accuracy"], "ci95": r["ci95"]})]
    rows += [(f"kind {k}", lambda r, k=k: r["per_kind"][k]) for k in ("free-form", "multiple-choice")]
    rows += [(f"expected {o}", lambda r, o=o: r["per_outcome"][o]) for o in OUTCOMES]
    for name, get in rows:
        lines.append(f"  {name:<22}" + "".join(f"{_pct(get(results[m])):<{width}}" for m in modes))
    lines.append(f"  {'read by':<22}" + "".join(
        f"{', '.join(f'{k} {v}' for k, v in sorted(results[m]['read_by'].items())):<{width}}" for m in modes))
    for mode in modes:
        r = results[mode]
        lines += ["", f"  {mode}: outcome confusion (rows expected, columns read)",
                  "    " + f"{'':<10}" + "".join(f"{o:>10}" for o in OUTCOMES)]
        lines += ["    " + f"{e:<10}" + "".join(f"{r['confusion'][e][o]:>10}" for o in OUTCOMES) for e in OUTCOMES]
        if r["worst_misreads"]:
            lines.append(f"  {mode}: worst misreads")
            for rec in r["worst_misreads"][:5]:
                want = rec["expected"]["outcome"] + (f" {rec['expected']['answers']}" if rec["expected"]["answers"] else "")
                got = rec["read"]["outcome"] + (f" {rec['read']['answer']!r}" if rec["read"]["answer"] else "")
                lines.append(f"    {rec['id']}: expected {want}, read {got} ({rec['read']['read_by']}): "
                             f"{rec['reply'][:90]!r}")
    return "\n".join(lines)


def run_extract_bench(cfg, gold: str, url: str | None, model: str | None, modes: list[str],
                      concurrency: int = 32, log=print) -> dict[str, Any]:
    """Load the gold file, reach the extractor (``url`` or the config's debater app), measure every mode."""
    from pbt_ray.serving.auth import client_key
    from pbt_ray.serving.chat_format import chat_formats
    from pbt_ray.serving.client import ChatClient

    items = load_gold(gold)
    log(f"[pbt] {len(items)} labelled replies from {gold}; modes: {', '.join(modes)}")

    async def go(endpoint: str, model_id: str):
        client = ChatClient(endpoint, timeout_s=cfg.serve.request_timeout_s, formats=chat_formats(cfg),
                            api_key=client_key(cfg.serve))
        try:
            return await measure(client, model_id, items, modes, cfg.grow.extractor_max_tokens, concurrency)
        finally:
            await client.close()

    if url:
        from pbt_ray.serving.client import preflight

        model_id = model or cfg.serve.roles.get("extractor", "extractor")
        asyncio.run(preflight(url.rstrip("/"), [model_id], api_key=client_key(cfg.serve)))
        results = asyncio.run(go(url.rstrip("/"), model_id))
        served = model_id
    else:
        from pbt_ray.loop import debater_endpoint
        from pbt_ray.runtime import ray_cluster

        model_id = model or "extractor"  # the role alias of our app
        served = cfg.serve.roles.get(model_id, model_id)
        with ray_cluster(cfg), debater_endpoint(cfg, log=log) as endpoint:
            results = asyncio.run(go(endpoint, model_id))
    log(format_results(results, gold, served))
    # The first mode (the configured one by default) at the top level; every mode under "modes".
    return {"gold": gold, "model": served, "mode": modes[0], **results[modes[0]], "modes": results}
