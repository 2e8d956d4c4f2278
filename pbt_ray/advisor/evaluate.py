"""The advisor recipe's evaluation and report (RECIPES.md section 2, "Evaluation").

Each receiver (the training receivers, and ``advisor.unseen_receiver`` when set) answers every held-out question
greedily with no signal, with the untrained advisor's greedy signal ("prior", round 1) and with each round's trained
advisor's ("posterior-round-k"). Per receiver and condition: accuracy (Wilson, n = questions), the absolute gain
over no signal (paired, McNemar p), the relative gain (accuracy / no-signal accuracy - 1, bootstrap over
questions), right -> wrong and wrong -> right flips against no signal (negative persuasion, as PBT's are-you-sure
counts them) and the share of signals that simply state the answer; posterior also against prior.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

from pbt_ray.config import PBTConfig


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def summarize(rows: list[dict], base: list[dict] | None = None, prior: list[dict] | None = None) -> dict[str, Any]:
    from pbt_ray.stats import cluster_bootstrap, paired_difference, proportion

    ok = [r for r in rows if "error" not in r]
    out: dict[str, Any] = {"n": len(ok), "failed": len(rows) - len(ok),
                           "accuracy": proportion(sum(r["correct"] for r in ok), len(ok))}
    signalled = [r for r in ok if r.get("signal") is not None]
    if signalled:
        out["states_answer"] = proportion(sum(r["states_answer"] for r in signalled), len(signalled))
    for name, ref in (("vs_no_signal", base), ("vs_prior", prior)):
        if ref is None:
            continue
        by = {r["question_id"]: r for r in ref if "error" not in r}
        both = [r for r in ok if r["question_id"] in by]
        b = [float(by[r["question_id"]]["correct"]) for r in both]
        o = [float(r["correct"]) for r in both]
        out[name] = paired_difference(b, o)
        if name == "vs_no_signal":
            right = [r for r in both if by[r["question_id"]]["correct"]]
            wrong = [r for r in both if not by[r["question_id"]]["correct"]]
            out["right_to_wrong"] = proportion(sum(not r["correct"] for r in right), len(right))
            out["wrong_to_right"] = proportion(sum(bool(r["correct"]) for r in wrong), len(wrong))
            if both and sum(b):
                value, ci = cluster_bootstrap(None, lambda x, y: y.mean() / x.mean() - 1 if x.mean() else float("nan"), b, o)
                out["relative_gain"] = {"value": value, "ci95": ci, "n": len(both), "method": "bootstrap over questions"}
            else:
                out["relative_gain"] = {"value": None, "ci95": None, "n": len(both),
                                        "method": "no interval (no question right without a signal)"}
    return out


def evaluate_round(cfg: PBTConfig, scfg: PBTConfig, url: str, k: int, log=print) -> dict[str, Any]:
    from pbt_ray.advisor.checking import states_answer
    from pbt_ray.advisor.prompts import task_of
    from pbt_ray.advisor.recipe import model_id, open_table, questions, receivers, round_dir
    from pbt_ray.serving.trained import has_adapter

    _, held = questions(cfg)
    recv = receivers(cfg, scfg)
    if cfg.advisor.unseen_receiver:
        recv.append(scfg.serve.roles.get(cfg.advisor.unseen_receiver, cfg.advisor.unseen_receiver))
    conditions: list[tuple[str, str | None]] = [("no-signal", None), ("prior", cfg.serve.roles["advisor"])] if k == 1 else []
    if has_adapter(round_dir(cfg, k) / "advisor"):
        conditions.append((f"posterior-round-{k}", model_id(k)))
    top = cfg.run_dir / "eval"
    failed = 0

    async def go() -> None:
        nonlocal failed
        raw, table = open_table(cfg, scfg, url)
        try:
            for label, advisor in conditions:
                signals: dict[str, str | None] = {q.id: None for q in held}
                if advisor is not None:  # one greedy signal per question, the same for every receiver
                    got = await asyncio.gather(*(table.signal(advisor, q, 0.0) for q in held), return_exceptions=True)
                    signals = {q.id: (None if isinstance(s, BaseException) else s) for q, s in zip(held, got)}
                for receiver in recv:
                    async def one(q):
                        if advisor is not None and signals[q.id] is None:
                            return {"question_id": q.id, "receiver": receiver, "error": "no signal"}
                        try:
                            reply, answer, right = await table.answer(receiver, q, signals[q.id], 0.0)
                        except Exception as exc:  # noqa: BLE001 - recorded with its item
                            return {"question_id": q.id, "receiver": receiver, "error": f"{type(exc).__name__}: {exc}"}
                        signal = signals[q.id]
                        return {"question_id": q.id, "receiver": receiver, "advisor": advisor, "signal": signal,
                                "reply": reply, "answer": answer, "correct": right,
                                "states_answer": bool(signal) and states_answer(
                                    signal, q.answers, q.choices, "numeric" if task_of(q) == "numeric" else "text")}

                    rows = list(await asyncio.gather(*(one(q) for q in held)))
                    where = _safe(receiver)
                    base = None if label == "no-signal" else _rows(top / "no-signal" / where / "results.jsonl")
                    prior = _rows(top / "prior" / where / "results.jsonl") if label.startswith("posterior") else None
                    summary = summarize(rows, base, prior)
                    failed += summary["failed"]
                    out = top / label / where
                    out.mkdir(parents=True, exist_ok=True)
                    (out / "results.jsonl").write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
                    (out / "metrics.json").write_text(json.dumps({**summary, "receiver": receiver, "advisor": advisor,
                                                                  "condition": label, "round": k}, indent=2) + "\n")
                    a = summary["accuracy"]
                    gain = summary.get("vs_no_signal")
                    log(f"[pbt] eval {label} -> {receiver}: accuracy {a['accuracy'] if a['accuracy'] is None else round(a['accuracy'], 3)} "
                        f"{a['ci95']} n={a['n']}" + (f"; minus no signal {gain['diff']} {gain['ci95']} p={gain['p_value']}"
                                                    if gain else ""))
        finally:
            await raw.close()

    asyncio.run(go())
    return {"conditions": [c for c, _ in conditions], "receivers": recv, "failed_items": failed, "complete": failed == 0}


def write_advisor_report(cfg: PBTConfig, log=print) -> Path:
    from pbt_ray.evaluation.report import ReportError
    from pbt_ray.evaluation.tables import estimate, from_proportion, write_tables_report

    top = cfg.run_dir / "eval"
    if not top.is_dir():
        raise ReportError(f"no evaluation results under {top}; run the eval stage first")
    order = ["no-signal", "prior"] + sorted((p.name for p in top.iterdir() if p.name.startswith("posterior-round-")),
                                            key=lambda n: int(n.rsplit("-", 1)[1]))
    receivers = sorted({p.name for c in order if (top / c).is_dir() for p in (top / c).iterdir() if p.is_dir()})
    sections = []
    for receiver in receivers:
        rows = []
        for label in order:
            path = top / label / receiver / "metrics.json"
            if not path.is_file():
                continue
            m = json.loads(path.read_text())
            cells = {"accuracy": from_proportion(m["accuracy"])}
            if "vs_no_signal" in m:
                d = m["vs_no_signal"]
                cells["gain (absolute)"] = estimate(d["diff"], d["ci95"], d["n"], p_value=d.get("p_value"))
                cells["gain (relative)"] = m["relative_gain"]
                cells["right → wrong"] = from_proportion(m["right_to_wrong"])
                cells["wrong → right"] = from_proportion(m["wrong_to_right"])
            if "vs_prior" in m:
                d = m["vs_prior"]
                cells["posterior − prior"] = estimate(d["diff"], d["ci95"], d["n"], p_value=d.get("p_value"))
            if "states_answer" in m:
                cells["signal states the answer"] = from_proportion(m["states_answer"])
            rows.append({"label": f"{label}" + (f" ({m['advisor']})" if m.get("advisor") else ""), "cells": cells})
        sections.append({"title": f"Receiver {receiver}: held-out accuracy", "rows": rows, "note": NOTE, "columns": [
            "accuracy", "gain (absolute)", "gain (relative)", "posterior − prior", "right → wrong", "wrong → right",
            "signal states the answer"]})
    out = write_tables_report(cfg.run_dir, f"Advisor run {cfg.name}", sections, NOTES, {"recipe": "advisor"})
    log(f"[pbt] report: {out} and {out.with_name('report.json')}")
    return out


NOTE = ("No signal: the receiver alone. Prior: with the untrained advisor's signal. Posterior-round-k: with round k's "
        "trained advisor's. Gains are paired on the same questions (McNemar p; the relative gain a bootstrap over "
        "questions); right → wrong: of the questions the receiver got right alone, the share a signal made it get "
        "wrong (negative persuasion).")
NOTES = ["A small advisor persuading a frozen receiver (Bai et al. 2024, RECIPES.md section 2). Every number has its n "
         "and a 95% interval; where an interval contains 0 the conditions cannot be told apart at this n. One model in "
         "both roles (the embedded default) shows the mechanism, not the weak-to-strong result."]
