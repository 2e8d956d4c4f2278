"""`pbt eval SUITE`: run one evaluation against an endpoint and write its results and metrics.

Output under ``<run dir>/eval/<label>/<suite>/``: ``results.jsonl`` (one scored item per line: replies, extracted
answers, correctness, or the error that stopped it) and ``metrics.json`` (the numbers, the evaluated
model, the extractor that scored it, counts and failures). Questions come from the test split of the
run's question set (mine.seed hashing), so the evaluated model never trained on them.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from pbt_ray.config import GrowConfig, PBTConfig
from pbt_ray.evaluation import metrics as M

SUITES = ("balanced", "are-you-sure", "misinformation", "team")


class EvalError(ValueError):
    """An evaluation cannot run (no items, no gold answers); the message says what to provide."""


def held_out_questions(cfg: PBTConfig) -> tuple[list, list]:
    """(the held-out questions to evaluate, every question of the set)."""
    from pbt_ray.preferences.datasets import split_of
    from pbt_ray.questions import load_questions, select_questions

    source = cfg.eval.questions or cfg.grow.questions
    every = load_questions(source, None, "skip").questions
    if source != cfg.grow.questions:
        # Another source (the paper: TriviaQA validation, §5.2 / §5.4) never fed the trees: all of it is held out.
        test = every
    else:
        # grow takes grow.question_ids, then the first grow.limit; with eval.held_out not-grown-or-test the rest are
        # held out too
        grown = ({q.id for q in select_questions(every, cfg.grow.question_ids, cfg.grow.limit, source)}
                 if cfg.eval.held_out == "not-grown-or-test" else None)
        test = [q for q in every if (grown is not None and q.id not in grown)
                or split_of(q.id, cfg.mine.seed, tuple(cfg.mine.split_fractions)) == "test"]
    if not test:
        raise EvalError(f"no test-split questions in {source}")
    return (test[: cfg.eval.limit] if cfg.eval.limit else test), every


def balanced_items(cfg: PBTConfig, pairs: str | None = None) -> list[dict]:
    from pbt_ray.evaluation.protocols import balanced_item
    from pbt_ray.preferences.pairs import read_pairs

    path = Path(pairs or cfg.run_dir / "preferences" / "pairs" / "test.parquet")
    if path.is_dir():
        path = path / "pairs" / "test.parquet" if (path / "pairs").is_dir() else path / "test.parquet"
    if not path.is_file():
        raise EvalError(f"no held-out pairs at {path}; run `pbt mine` first or pass --pairs")
    items = [balanced_item(p) for p in read_pairs(path) if p.type in ("resist", "accept")]
    if not items:
        raise EvalError(f"{path} has no resist/accept pairs to evaluate on (grow more trees)")
    if any(not i["gold"] for i in items):
        raise EvalError(f"{path}: items without gold answers cannot be scored")
    return items[: cfg.eval.balanced_limit] if cfg.eval.balanced_limit else items


def role_models(cfg: PBTConfig, endpoint_is_ours: bool) -> dict[str, str]:
    """The model ids of the evaluated model (default: the served base of train.base_model, so 'base' and
    'trained' differ only by the training), the extractor, and the team's strong and weak seats."""
    roles = dict(cfg.serve.roles)
    extractor = cfg.eval.extractor or ("extractor" if endpoint_is_ours else roles["extractor"])
    return {"model": cfg.eval.model or cfg.base_served().id, "extractor": extractor,
            "persuader": "persuader" if endpoint_is_ours else roles["persuader"],
            "strong": cfg.seat_model("strong"), "weak": cfg.seat_model("weak")}


async def _run(cfg: PBTConfig, suite: str, endpoint: str, models: dict[str, str], pairs: str | None,
               progress, targets_file: Path | None = None) -> tuple[list[dict], dict[str, Any]]:
    from pbt_ray.evaluation.runner import Evaluator, run_all
    from pbt_ray.serving.auth import client_key
    from pbt_ray.serving.chat_format import chat_formats
    from pbt_ray.serving.client import ChatClient

    from pbt_ray.serving.retry import RetryingClient, RetryPolicy

    # Every request of every suite waits through a replica restart (serve.retry_window_s), so an evaluation
    # survives a dead replica instead of recording its items as failed; the SDK's own retries are off.
    raw = ChatClient(endpoint, timeout_s=cfg.serve.request_timeout_s, formats=chat_formats(cfg),
                     api_key=client_key(cfg.serve), max_retries=0)
    client = RetryingClient(raw, RetryPolicy(window_s=cfg.serve.retry_window_s))
    try:
        ev = Evaluator(client, models["model"], models["extractor"], cfg.eval.max_tokens, cfg.eval.concurrency,
                       extract_mode=cfg.extract.mode, balanced_temperature=cfg.eval.balanced_temperature)
        if suite == "balanced":
            items = balanced_items(cfg, pairs)
            progress.reset(total=len(items))
            results = await run_all(items, ev.balanced, key="pair_id", on_done=lambda _: progress.update(1))
            return results, M.balanced([r for r in results if "error" not in r])
        questions, pool = held_out_questions(cfg)
        if suite == "are-you-sure":
            progress.reset(total=len(questions))
            results = await run_all(questions, ev.are_you_sure, on_done=lambda _: progress.update(1))
            return results, M.are_you_sure([r for r in results if "error" not in r])
        if suite == "misinformation":
            return await _misinformation(cfg, client, ev, models, questions, progress, targets_file)
        return await _team(cfg, client, models, questions, progress)
    finally:
        await raw.close()


async def _misinformation(cfg: PBTConfig, client, ev, models: dict[str, str], questions: list, progress,
                          targets_file: Path | None = None):
    """§5.3: each question's target (docs/evaluation.md "Misinformation (Farm)"), then the persuasion
    dialogue with the appeal order rotated per item. A question without a usable target is a failed item
    that keeps its target record, so the reason is in results.jsonl. With ``targets_file``, targets written
    there by an earlier evaluation are reused (an experiment's cells persuade towards the same wrong answers)."""
    from pbt_ray.evaluation.misinformation import build_targets, generate_target, load_targets, save_targets, tree_answers
    from pbt_ray.evaluation.runner import run_all

    targets = load_targets(targets_file, questions) if targets_file is not None else None
    if targets is None:
        answers = {}
        if (cfg.run_dir / "trees").is_dir():
            from pbt_ray.dialogue.pipeline import read_trees

            answers = tree_answers(read_trees(cfg.run_dir), questions)
        persuader = _persuader(cfg, models)
        targets = await build_targets(
            questions, answers, farm=_farm(cfg, questions), seed=cfg.grow.seed, concurrency=cfg.eval.concurrency,
            generate=lambda q: generate_target(client, persuader, q, seed=cfg.grow.seed, send_seed=cfg.grow.seed_requests))
        if targets_file is not None:
            save_targets(targets_file, targets)
    index = {q.id: i for i, q in enumerate(questions)}

    async def one(q) -> dict:
        target = targets[q.id]
        if target.answer is None:
            return {"question_id": q.id, "target": target.record(),
                    "error": f"no misinformation target: {target.error}"}
        return await ev.misinformation(q, target, list(cfg.eval.appeals), index=index[q.id],
                                       rotate=cfg.eval.rotate_appeals)

    progress.reset(total=len(questions))
    results = await run_all(questions, one, on_done=lambda _: progress.update(1))
    for r in results:  # an item that failed in the dialogue still names its target
        r.setdefault("target", targets[r.get("question_id", r.get("id"))].record())
    numbers = M.misinformation([r for r in results if "error" not in r], [t.record() for t in targets.values()])
    numbers["target_failures"] = sum(t.answer is None for t in targets.values())
    return results, numbers


def _farm(cfg: PBTConfig, questions: list) -> dict | None:
    """Targets from the Farm file named by eval.misinformation_targets (None: auto)."""
    from pbt_ray.evaluation.misinformation import FarmFormatError, farm_targets, load_farm

    if cfg.eval.misinformation_targets == "auto":
        return None
    path = Path(cfg.eval.misinformation_targets)
    if not path.is_file():
        raise EvalError(f"eval.misinformation_targets: no Farm file at {path} (or set it to auto)")
    try:
        found = farm_targets(load_farm(path), questions)
    except FarmFormatError as exc:
        raise EvalError(str(exc)) from None
    if not found:  # asking for Farm and silently getting the auto targets would mislabel the numbers
        raise EvalError(f"{path}: no row matches an evaluated question by id or question text; point eval.questions "
                        "at the same questions")
    return found


def _persuader(cfg: PBTConfig, models: dict[str, str]) -> str:
    """The model that writes generated targets: the persuader role (its alias on our app)."""
    return models.get("persuader") or cfg.serve.roles["persuader"]


async def _team(cfg: PBTConfig, client, models: dict[str, str], questions: list, progress):
    """§5.4: both models discuss each question in evaluation mode, once with each speaking first."""
    from pbt_ray.dialogue.growth import GrowthEngine
    from pbt_ray.serving.retry import RetryPolicy

    grow = GrowConfig(mode="eval", depth=cfg.debate.turns, max_tokens=cfg.eval.max_tokens, seed=cfg.grow.seed,
                      independent_first=cfg.grow.independent_first, max_in_flight=cfg.eval.concurrency)
    progress.reset(total=2 * len(questions))
    records, results = [], []
    for order, (a, b) in (("strong_first", ("strong", "weak")), ("weak_first", ("weak", "strong"))):
        engine = GrowthEngine(client, grow, {"A": models[a], "B": models[b], "extractor": models["extractor"]},
                              cfg.extract.mode, retry=RetryPolicy(max_retries=0))  # the client retries already
        trees = await engine.grow(questions)
        for tree in trees:
            progress.update(1)
            if tree.status != "complete":
                results.append({"question_id": tree.question_id, "order": order, "error": tree.error})
                continue
            record = M.team_record(tree, strong="A" if a == "strong" else "B")
            records.append(record)
            results.append({"question_id": tree.question_id, **vars(record), "turns": [
                {"speaker": n.speaker, "text": n.text, "answer": n.answer, "correct": n.correct, "outcome": n.outcome,
                 "raw_answer": n.raw_answer, "read_by": n.read_by} for n in tree.nodes]})
    return results, M.team(records)


def evaluate(cfg: PBTConfig, suite: str, endpoint: str, *, pairs: str | None = None, endpoint_is_ours: bool = True,
             label: str = "base", log=print, show_progress: bool = True, out_dir: Path | None = None,
             targets_file: Path | None = None, attempt_key: str | None = None) -> dict[str, Any]:
    """Run ``suite`` and write ``<run dir>/eval/<label>/<suite>/`` (label: which model, e.g. base, trained), or
    ``<out_dir>/<suite>/``; ``targets_file``: misinformation targets to reuse (written when absent).

    ``attempt_key`` (the loop's eval-stage fingerprint) is recorded with the result: a rerun with the same key
    keeps a suite an interrupted attempt already finished with no failed item (a driver killed mid-evaluation
    redoes only the rest); any other key, or none, evaluates again."""
    from tqdm.auto import tqdm

    if suite not in SUITES:
        raise EvalError(f"unknown evaluation '{suite}'; one of {', '.join(SUITES)}")
    models = role_models(cfg, endpoint_is_ours)
    out_dir = (Path(out_dir) if out_dir is not None else cfg.run_dir / "eval" / label) / suite
    if attempt_key is not None and (kept := finished_suite(out_dir, attempt_key)) is not None:
        log(f"[pbt] eval {suite} ({label}): kept from the interrupted attempt of this stage ({kept['items']} items, "
            f"{kept['failed']} failed)")
        return kept
    with tqdm(desc=f"eval {suite}", unit="item", disable=not show_progress) as bar:
        results, numbers = asyncio.run(_run(cfg, suite, endpoint, models, pairs, bar, targets_file))
    out_dir.mkdir(parents=True, exist_ok=True)  # after: a suite with no items (EvalError) leaves no empty directory
    errors = [r for r in results if "error" in r]
    # What the requests named (a role alias on our app) and which served model that is, for the report.
    served = {k: (cfg.serve.roles.get(v, v) if endpoint_is_ours else v) for k, v in models.items()}
    summary = {"suite": suite, "label": label, "endpoint": endpoint, "model": models["model"], "extractor": models["extractor"],
               "extract_mode": cfg.extract.mode,
               "served": served,
               **({"strong": models["strong"], "weak": models["weak"]} if suite == "team" else {}),
               "items": len(results), "failed": len(errors), "metrics": numbers,
               **({"attempt_key": attempt_key} if attempt_key is not None else {})}
    _atomic_write(out_dir / "results.jsonl", "".join(json.dumps(r, default=str) + "\n" for r in results))
    _atomic_write(out_dir / "metrics.json", json.dumps(summary, indent=2, default=str) + "\n")
    log(format_metrics(summary))
    for e in errors[:5]:
        log(f"[pbt] failed item: {e}")
    return summary


def finished_suite(out_dir: Path, attempt_key: str) -> dict[str, Any] | None:
    """The summary a suite left in ``out_dir`` if it finished with this ``attempt_key`` (results.jsonl is written
    before metrics.json, each atomically, so a metrics.json means its results are whole)."""
    try:
        summary = json.loads((out_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    ok = (isinstance(summary, dict) and summary.get("attempt_key") == attempt_key and not summary.get("failed")
          and (out_dir / "results.jsonl").is_file())  # failed items are redone, as a rerun does
    return summary if ok else None


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def reader(summary: dict[str, Any], extractor: str) -> str:
    """How a suite's answers were read, in words: the mode, and the extractor model where one is asked."""
    mode = summary.get("extract_mode", "prompt")
    if mode == "rules":
        return "answers read by the deterministic reader (extract.mode rules)"
    return f"answers read by extract.mode {mode} with extractor {extractor}"


def format_metrics(summary: dict[str, Any]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return "n/a" if v != v else f"{v:.3f}"
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}: {fmt(x)}" for k, x in v.items()) + "}"
        return str(v)

    served = summary.get("served", {})

    def named(key: str) -> str:
        name, model = summary[key], served.get(key, summary[key])
        return name if model == name else f"{name} ({model})"

    head = (f"[pbt] eval {summary['suite']}: {summary['items']} items ({summary['failed']} failed), model "
            f"{named('model')}, {reader(summary, named('extractor'))}")
    return "\n".join([head] + [f"  {k:<26} {fmt(v)}" for k, v in summary["metrics"].items()])
