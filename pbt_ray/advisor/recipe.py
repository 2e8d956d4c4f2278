"""`recipe: advisor`: a small advisor that persuades a frozen receiver (Bai et al., arXiv 2405.18718; RECIPES.md
section 2), declared as stages over the shared parts (:mod:`pbt_ray.recipes`).

Round k serves the base models and the latest trained advisor (``advisor-<j>``, role ``advisor``); receivers never
change.

- episodes: per train question, each receiver's n answers without a signal and with each of K advisor signals
  (:mod:`.generate`) -> ``episodes.parquet`` (versioned schema, :mod:`.episodes`).
- mine: DPO pairs (highest vs lowest utility, averaged over receivers, minimum gap) and SFT rows (positive utility)
  (:mod:`.mining`) -> ``advisor/data/{pairs,sft}/train.parquet``.
- train: the advisor by DPO from its previous round's model (so DPO's reference is advisor_{k-1}); SFT first with
  ``advisor.sft`` -> ``advisor/adapter``.
- eval: receivers on held-out questions with no signal, the untrained advisor's signal (prior) and the trained one's
  (posterior) (:mod:`.evaluate`) -> ``<run dir>/eval/``; report.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

from pbt_ray.config import PBTConfig
from pbt_ray.recipes import Recipe, Step, adapter_digest, round_dir, run_output, set_aside
from pbt_ray.stages import Stage, _SERVE_OPS, files_digest

_TRAIN_OPS = tuple(f"train.{f}" for f in (
    "pairs", "storage_path", "checkpoint_every", "keep_checkpoints", "max_failures", "logging_steps",
    "cpus_per_worker", "accelerator_type", "loggers", "tensorboard", "run_name"))

STAGES: tuple[Stage, ...] = (
    Stage("episodes", config=("advisor", "serve.models", "serve.roles", "extract"),
          ignore=(*_SERVE_OPS, "advisor.concurrency", "advisor.eval_limit", "advisor.unseen_receiver"),
          writes=("episodes.parquet", "episodes.json"), describe="signals and the receivers' answers"),
    Stage("mine", reads=("episodes",), config=("advisor.min_gap",), writes=("advisor/data/", "mining.json"),
          describe="advisor DPO pairs and SFT rows"),
    Stage("train", reads=("mine",), config=("train", "advisor.sft"), ignore=_TRAIN_OPS, writes=("advisor/adapter/",),
          describe="DPO of the advisor (SFT first with advisor.sft)"),
    Stage("eval", reads=("train",), config=("advisor", "serve.models", "serve.roles", "extract"),
          ignore=(*_SERVE_OPS, "advisor.concurrency"), writes=("eval/",), describe="no signal / prior / posterior"),
    Stage("report", reads=("eval",), writes=("report/",), describe="report.json and report.html"),
)


def model_id(k: int) -> str:
    return f"advisor-{k}"


def latest(cfg: PBTConfig, upto: int) -> tuple[int, Path] | None:
    from pbt_ray.serving.trained import has_adapter

    for j in range(upto, 0, -1):
        if has_adapter(round_dir(cfg, j) / "advisor"):
            return j, round_dir(cfg, j) / "advisor"
    return None


def served_with(cfg: PBTConfig, upto: int, log=print) -> PBTConfig:
    """The app with the newest trained advisor of rounds <= ``upto`` in the role advisor (merged once)."""
    from pbt_ray.serving.trained import merged_model, with_trained_model

    found = latest(cfg, upto)
    if found is None:
        return cfg
    return with_trained_model(cfg, merged_model(found[1], log=log), model_id=model_id(found[0]), role="advisor",
                              base_id=cfg.serve.roles["advisor"])


def questions(cfg: PBTConfig):
    """(train questions, held-out questions) of advisor.questions, split once (seeded)."""
    from pbt_ray.advisor.tasks import arithmetic_items
    from pbt_ray.questions import load_questions

    a = cfg.advisor
    items = []
    for source in a.questions:
        items += arithmetic_items(a.arithmetic_items, a.seed) if source == "generated:arithmetic" else \
            load_questions(source).questions
    seen = set()
    items = [q for q in items if not (q.id in seen or seen.add(q.id))]
    order = list(items)
    random.Random(a.seed).shuffle(order)
    cut = max(1, round(len(order) * a.held_out_fraction))
    train, held = order[cut:], order[:cut]
    return train[: a.limit] if a.limit else train, held[: a.eval_limit] if a.eval_limit else held


def receivers(cfg: PBTConfig, serve_cfg: PBTConfig) -> list[str]:
    return [serve_cfg.serve.roles.get(r, r) for r in cfg.advisor.receivers]


def open_table(cfg: PBTConfig, serve_cfg: PBTConfig, url: str):
    from pbt_ray.advisor.generate import Table
    from pbt_ray.recipes import chat_client

    raw, client = chat_client(serve_cfg, url)
    return raw, Table(client, cfg.advisor, serve_cfg.serve.roles["extractor"], cfg.extract.mode)


def _episodes(step: Step) -> dict:
    from tqdm.auto import tqdm

    from pbt_ray.advisor.episodes import utilities, write_episodes
    from pbt_ray.advisor.generate import gather_questions

    cfg = step.cfg
    train, _ = questions(cfg)
    advisor, recv = step.serve_cfg.serve.roles["advisor"], receivers(cfg, step.serve_cfg)
    step.log(f"[pbt] episodes: {advisor} advises {', '.join(recv)} on {len(train)} questions "
             f"({cfg.advisor.signals} signals x {cfg.advisor.answers} answers)")

    async def go():
        raw, table = open_table(cfg, step.serve_cfg, step.url)
        try:
            with tqdm(total=len(train), desc="episodes", unit="question") as bar:
                return await gather_questions(table, step.k, train, advisor, recv, lambda: bar.update(1))
        finally:
            await raw.close()

    episodes, stats = asyncio.run(go())
    write_episodes(episodes, step.dir / "episodes.parquet")
    util = list(utilities(episodes).values())
    signals = [e for e in episodes if e.signal_id != "none"]
    summary = {**stats, "advisor": advisor, "receivers": recv, "episodes": len(episodes),
               "signals_scored": len(util), "mean_utility": sum(util) / len(util) if util else None,
               "positive": sum(u > 0 for u in util), "negative": sum(u < 0 for u in util),
               "states_answer": sum(e.states_answer for e in signals), "signal_episodes": len(signals)}
    (step.dir / "episodes.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    step.log(f"[pbt] episodes: {len(episodes)} ({stats['failed']} questions failed); {len(util)} signals scored, "
             f"mean utility {summary['mean_utility'] if util else 'n/a'}, {summary['positive']} helped, "
             f"{summary['negative']} hurt; {summary['states_answer']} of {len(signals)} signal episodes state the answer")
    return {"episodes": len(episodes), "failed": stats["failed"], "complete": stats["failed"] == 0}


def _mine(step: Step) -> dict:
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pbt_ray.advisor.episodes import read_episodes
    from pbt_ray.advisor.mining import advisor_pairs, advisor_sft_rows
    from pbt_ray.advisor.prompts import advisor_messages

    cfg = step.cfg
    episodes = read_episodes(step.dir / "episodes.parquet")
    train, _ = questions(cfg)
    by_id = {q.id: q for q in train}
    pairs = advisor_pairs(episodes, cfg.advisor.min_gap)
    rows = advisor_sft_rows(episodes)
    root = step.dir / "advisor" / "data"

    def write(table_rows, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not table_rows:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(pa.Table.from_pylist(table_rows), tmp)
        os.replace(tmp, path)

    def said(text: str) -> list[dict]:
        return [{"role": "assistant", "content": text}]

    write([{"prompt": advisor_messages(by_id[p.question_id]), "chosen": said(p.chosen), "rejected": said(p.rejected),
            "question_id": p.question_id, "gap": p.chosen_utility - p.rejected_utility} for p in pairs],
          root / "pairs" / "train.parquet")
    write([{"prompt": advisor_messages(by_id[r.question_id]), "completion": said(r.signal), "question_id": r.question_id}
           for r in rows], root / "sft" / "train.parquet")
    stats = {"pairs": len(pairs), "sft_rows": len(rows), "questions": len({e.question_id for e in episodes})}
    (step.dir / "mining.json").write_text(json.dumps(stats, indent=2) + "\n")
    step.log(f"[pbt] mined {len(pairs)} advisor pairs (utility gap >= {cfg.advisor.min_gap}) and {len(rows)} SFT rows")
    return stats


def role_config(cfg: PBTConfig, step: Step) -> PBTConfig:
    from pbt_ray.serving.trained import merged_model

    found = latest(cfg, step.k - 1)
    base = str(merged_model(found[1], log=step.log).resolve()) if found else \
        cfg.serve.model(cfg.serve.roles["advisor"]).source
    train = cfg.train.model_copy(update={"base_model": base, "pairs": None, "run_name": f"advisor-round-{step.k}",
                                         "merge": False, "generation_eval": False, "select": "last",
                                         "sft": cfg.advisor.sft, "dpo": True})
    return cfg.model_copy(update={"runs_dir": str(step.dir), "name": "advisor", "train": train})


def _train(step: Step) -> dict:
    from pbt_ray.training.data import TrainDataError
    from pbt_ray.training.launch import prepare, train

    rcfg = role_config(step.cfg, step)
    data = str(step.dir / "advisor" / "data")
    try:
        plan = prepare(rcfg, data, log=step.log)
    except TrainDataError as exc:
        step.log(f"[pbt] advisor not trained this round: {exc}")
        set_aside(step.dir / "advisor", step.log)
        return {"skipped": str(exc)}
    metrics = train(rcfg, data, log=step.log, plan=plan, attempt=step.state.attempt("train"))
    info = {"adapter": metrics.get("adapter"), "global_step": metrics.get("global_step"),
            "run_name": metrics.get("run_name"), "base_model": rcfg.train.base_model}
    (step.dir / "train.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    return info


def _eval(step: Step) -> dict:
    from pbt_ray.advisor.evaluate import evaluate_round
    from pbt_ray.serving.app import deploy, wait_ready

    scfg = served_with(step.cfg, step.k, step.log)
    deploy(scfg, log=step.log)
    return evaluate_round(step.cfg, scfg, wait_ready(scfg, log=step.log), step.k, step.log)


def _report(step: Step) -> dict:
    from pbt_ray.advisor.evaluate import write_advisor_report

    return {"report": str(write_advisor_report(step.cfg, step.log))}


def _run_stage(step: Step, name: str) -> dict | None:
    return {"episodes": _episodes, "mine": _mine, "train": _train, "eval": _eval, "report": _report}[name](step)


def _output(step: Step, name: str) -> str | None:
    if name == "episodes":
        return files_digest([step.dir / "episodes.parquet"])
    if name == "mine":
        return files_digest(list((step.dir / "advisor" / "data").rglob("*.parquet")))
    if name == "train":
        return adapter_digest(step.dir / "advisor")
    return run_output(step, name)


RECIPE = Recipe(name="advisor", stages=STAGES, run_stage=_run_stage, output=_output,
                serving=lambda step: served_with(step.cfg, step.k - 1, step.log),
                serves=frozenset({"episodes", "eval"}), feeds_later=("train",),
                describe="a small advisor persuading a frozen receiver (RECIPES.md section 2)")
