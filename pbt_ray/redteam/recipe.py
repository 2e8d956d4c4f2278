"""`recipe: redteam`: adversarial attacker <-> judge fine-tuning (O'Neill et al., arXiv 2308.13768; RECIPES.md
section 1), declared as stages over the shared parts.

Round k: the app serves the base model and the latest trained attacker and judge (``redteam-attacker-<j>``,
``redteam-judge-<j>``, merged adapters of round j < k, in the roles ``attacker`` and ``judge``).

- bouts: the attacker rewrites every train seed twin towards its class, K times; the oracle labels, the judge
  classifies (:mod:`pbt_ray.redteam.generate`) -> ``bouts.parquet`` (versioned schema, :mod:`.bouts`).
- mine: judge SFT records (fooled prompts repeated, earlier rounds replayed) and attacker DPO pairs
  (:mod:`.mining`) -> ``judge/data/sft/train.parquet``, ``attacker/data/pairs/train.parquet``.
- train: the judge by SFT only, the attacker by DPO (its reference: the previous round's attacker), each a LoRA
  adapter on Ray Train (:mod:`pbt_ray.training.launch`) -> ``judge/adapter``, ``attacker/adapter``.
- eval: both trained models served side by side; the judges on the held-out, hard and transfer sets, the
  attackers against the frozen round-1 judge and the current one (:mod:`.evaluate`) -> ``<run dir>/eval/``.
- report: every round's numbers with n and 95% intervals (:mod:`pbt_ray.evaluation.tables`).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from pbt_ray.config import PBTConfig
from pbt_ray.recipes import Recipe, Step, adapter_digest, round_dir, run_output, set_aside
from pbt_ray.stages import Stage, _SERVE_OPS, files_digest

ROLES = ("judge", "attacker")
_TRAIN_OPS = tuple(f"train.{f}" for f in (
    "pairs", "storage_path", "checkpoint_every", "keep_checkpoints", "max_failures", "logging_steps",
    "cpus_per_worker", "accelerator_type", "loggers", "tensorboard", "run_name"))
_RT_OPS = ("redteam.concurrency",)

STAGES: tuple[Stage, ...] = (
    Stage("bouts", config=("redteam", "serve.models", "serve.roles"),
          ignore=(*_SERVE_OPS, *_RT_OPS, "redteam.eval_limit", "redteam.strong_judge", "redteam.transfer"),
          writes=("bouts.parquet", "bouts.json"), describe="attacker rewrites, oracle labels, judge verdicts"),
    Stage("mine", reads=("bouts",), config=("redteam.fooled_weight", "redteam.replay_fraction", "redteam.seed"),
          writes=("judge/data/", "attacker/data/", "mining.json"), describe="judge SFT rows, attacker DPO pairs"),
    Stage("train", reads=("mine",), config=("train", "redteam.judge_sft_steps", "redteam.attacker_dpo"),
          ignore=_TRAIN_OPS, writes=("judge/adapter/", "attacker/adapter/"), describe="judge SFT, attacker DPO"),
    Stage("eval", reads=("train",), config=("redteam", "serve.models", "serve.roles"), ignore=(*_SERVE_OPS, *_RT_OPS),
          writes=("eval/",), describe="judges and attackers with intervals"),
    Stage("report", reads=("eval",), writes=("report/",), describe="report.json and report.html"),
)


def model_id(role: str, k: int) -> str:
    return f"redteam-{role}-{k}"


def latest(cfg: PBTConfig, role: str, upto: int) -> tuple[int, Path] | None:
    """(round, adapter run dir) of the newest round <= ``upto`` that trained ``role``; None: none did."""
    from pbt_ray.serving.trained import has_adapter

    for j in range(upto, 0, -1):
        if has_adapter(round_dir(cfg, j) / role):
            return j, round_dir(cfg, j) / role
    return None


def served_with(cfg: PBTConfig, upto: int, log=print) -> PBTConfig:
    """The app with the newest trained attacker and judge of rounds <= ``upto`` added, in the roles attacker and
    judge (each merged into its base once); the base keeps serving (the oracle's and the frozen judge's model)."""
    from pbt_ray.serving.trained import merged_model, with_trained_model

    out = cfg
    for role in ROLES:
        found = latest(cfg, role, upto)
        if found is not None:
            j, where = found
            out = with_trained_model(out, merged_model(where, log=log), model_id=model_id(role, j), role=role,
                                     base_id=cfg.serve.roles[role])
    return out


def _serving(step: Step) -> PBTConfig:
    return served_with(step.cfg, step.k - 1, step.log)


def _items(cfg: PBTConfig):
    from pbt_ray.redteam.data import contrast_pairs, split

    rcfg = cfg.redteam
    train, held = split(contrast_pairs(rcfg.seeds), rcfg.held_out_fraction, rcfg.seed)
    return train[: rcfg.limit] if rcfg.limit else train, held[: rcfg.eval_limit] if rcfg.eval_limit else held


def _earlier_prompts(cfg: PBTConfig, k: int) -> list[str]:
    from pbt_ray.redteam.bouts import read_bouts

    out = []
    for j in range(1, k):
        path = round_dir(cfg, j) / "bouts.parquet"
        if path.is_file():
            out += [b.prompt for b in read_bouts(path)]
    return out


def _bouts(step: Step) -> dict:
    from tqdm.auto import tqdm

    from pbt_ray.recipes import chat_client
    from pbt_ray.redteam import generate
    from pbt_ray.redteam.bouts import flag_near_duplicates, write_bouts

    cfg, rcfg = step.cfg, step.cfg.redteam
    train, _ = _items(cfg)
    items = [twin for pair in train for twin in pair]
    attacker, judge = (step.serve_cfg.serve.roles[r] for r in ("attacker", "judge"))
    step.log(f"[pbt] bouts: {attacker} rewrites {len(items)} seed items x {rcfg.rewrites}; {judge} judges")

    async def go():
        raw, client = chat_client(step.serve_cfg, step.url)
        try:
            arena = generate.Arena(client, rcfg, oracle_model=step.serve_cfg.serve.roles.get("oracle"))
            with tqdm(total=len(items) * rcfg.rewrites, desc="bouts", unit="bout") as bar:
                return await generate.bouts(arena, step.k, attacker, judge, items, lambda: bar.update(1))
        finally:
            await raw.close()

    bouts, stats = asyncio.run(go())
    flag_near_duplicates(bouts, [t.text for t in items] + _earlier_prompts(cfg, step.k), rcfg.near_duplicate)
    write_bouts(bouts, step.dir / "bouts.parquet")
    from pbt_ray.redteam.metrics import attacker_metrics, judge_metrics_of

    summary = {**stats, "attacker": attacker, "judge": judge, "judge_metrics": judge_metrics_of(bouts),
               "attacker_metrics": attacker_metrics(bouts)}
    (step.dir / "bouts.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    a = summary["attacker_metrics"]
    step.log(f"[pbt] bouts: {len(bouts)} written ({stats['empty_rewrites']} empty rewrites, {stats['failed']} failed); "
             f"on target {a['validity']['right']}/{a['validity']['n']}, fooled the judge "
             f"{a['fool_rate']['right']}/{a['fool_rate']['n']}, near-duplicates {a['near_duplicates']}")
    return {"bouts": len(bouts), "failed": stats["failed"], "complete": stats["failed"] == 0}


def _mine(step: Step) -> dict:
    from pbt_ray.redteam.bouts import read_bouts
    from pbt_ray.redteam.mining import (
        attacker_pairs, judge_rows, mining_stats, read_rows, write_training_data)

    cfg, rcfg = step.cfg, step.cfg.redteam
    bouts = read_bouts(step.dir / "bouts.parquet")
    earlier = read_rows(round_dir(cfg, step.k - 1) / "judge" / "data" / "rows.jsonl") if step.k > 1 else []
    rows = judge_rows(bouts, earlier, fooled_weight=rcfg.fooled_weight, replay_fraction=rcfg.replay_fraction,
                      seed=rcfg.seed + step.k)
    pairs = attacker_pairs(bouts)
    train, _ = _items(cfg)
    seeds = {twin.id: twin.text for pair in train for twin in pair}
    write_training_data(step.dir, rows, pairs, seeds)
    stats = mining_stats(bouts, rows, pairs)
    (step.dir / "mining.json").write_text(json.dumps(stats, indent=2) + "\n")
    step.log(f"[pbt] mined {stats['judge_rows']} judge rows ({stats['judge_rows_replayed']} replayed, "
             f"{sum(r.fooled for r in rows)} that fooled the judge weigh x{rcfg.fooled_weight}) and "
             f"{stats['attacker_pairs']} attacker pairs ({stats['rejected_off_target']} rejecting an off-target prompt)")
    return stats


def role_config(cfg: PBTConfig, step: Step, role: str) -> PBTConfig:
    """The config that trains ``role`` in round k: from the served model that plays the role in round 1, then from
    the previous round's model of that role (so DPO's reference is the previous attacker), into
    ``<round dir>/<role>/adapter``; the judge by SFT only."""
    from pbt_ray.serving.trained import merged_model

    found = latest(cfg, role, step.k - 1)
    # Each role trains from the model that plays it (a small judge, a larger attacker), then from its own last round.
    base = str(merged_model(found[1], log=step.log).resolve()) if found else \
        cfg.serve.model(cfg.serve.roles[role]).source
    common = {"base_model": base, "pairs": None, "run_name": f"{role}-round-{step.k}", "merge": False,
              "generation_eval": False, "select": "last"}
    if role == "judge":
        train = cfg.train.model_copy(update={**common, "sft": True, "dpo": False,
                                             "sft_max_steps": cfg.redteam.judge_sft_steps})
    else:
        train = cfg.train.model_copy(update={**common, "dpo": True})
    return cfg.model_copy(update={"runs_dir": str(step.dir), "name": role, "train": train})


def _train(step: Step) -> dict:
    from pbt_ray.training.data import TrainDataError
    from pbt_ray.training.launch import prepare, train

    info = {}
    for role in ROLES:
        if role == "attacker" and not step.cfg.redteam.attacker_dpo:
            info[role] = {"skipped": "redteam.attacker_dpo is off"}
            continue
        rcfg = role_config(step.cfg, step, role)
        data = str(step.dir / role / "data")
        try:
            plan = prepare(rcfg, data, log=step.log)
        except TrainDataError as exc:
            step.log(f"[pbt] {role} not trained this round: {exc}")
            set_aside(step.dir / role, step.log)
            info[role] = {"skipped": str(exc)}
            continue
        metrics = train(rcfg, data, log=step.log, plan=plan, attempt=step.state.attempt("train"))
        info[role] = {"adapter": metrics.get("adapter"), "global_step": metrics.get("global_step"),
                      "run_name": metrics.get("run_name"), "base_model": rcfg.train.base_model}
    (step.dir / "train.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    return info


def _eval(step: Step) -> dict:
    from pbt_ray.redteam.evaluate import evaluate_round
    from pbt_ray.serving.app import deploy, wait_ready

    scfg = served_with(step.cfg, step.k, step.log)  # this round's attacker and judge, side by side
    deploy(scfg, log=step.log)
    url = wait_ready(scfg, log=step.log)
    return evaluate_round(step.cfg, scfg, url, step.k, step.log)


def _report(step: Step) -> dict:
    from pbt_ray.redteam.evaluate import write_redteam_report

    out = write_redteam_report(step.cfg, step.log)
    return {"report": str(out)}


def _run_stage(step: Step, name: str) -> dict | None:
    return {"bouts": _bouts, "mine": _mine, "train": _train, "eval": _eval, "report": _report}[name](step)


def _output(step: Step, name: str) -> str | None:
    d = step.dir
    if name == "bouts":
        return files_digest([d / "bouts.parquet"])
    if name == "mine":
        return files_digest(list((d / "judge" / "data").rglob("*.parquet")) + list((d / "attacker" / "data").rglob("*.parquet")))
    if name == "train":
        digests = [adapter_digest(d / role) for role in ROLES]
        return None if digests == [None, None] else "-".join(str(x) for x in digests)
    return run_output(step, name)


RECIPE = Recipe(name="redteam", stages=STAGES, run_stage=_run_stage, output=_output, serving=_serving,
                serves=frozenset({"bouts", "eval"}), feeds_later=("train",),
                describe="attacker <-> judge fine-tuning (RECIPES.md section 1)")
