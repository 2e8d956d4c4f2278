"""The loop's stages, composed: what `pbt run` and the `jobs/` entrypoints call.

serve -> debate -> grow -> mine -> train -> serve the trained model -> evaluate (base and trained) ->
report, under one run directory; each finished stage is recorded in ``loop_state.json`` and skipped on a
rerun.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from pbt_ray.config import GrowConfig, PBTConfig
from pbt_ray.dialogue.tree import Tree, to_row


@contextlib.contextmanager
def debater_endpoint(cfg: PBTConfig, log=print) -> Iterator[str]:
    """An OpenAI base URL to generate against: ``grow.endpoint`` if set, else the deployed Serve app.

    Must run inside :func:`pbt_ray.runtime.ray_cluster`.
    """
    if cfg.grow.endpoint:
        url = cfg.grow.endpoint.rstrip("/")
        check_endpoint(cfg, url)
        yield url
        return
    from pbt_ray.serving.app import deploy, wait_ready

    deploy(cfg, log=log)
    yield wait_ready(cfg, log=log)


def check_endpoint(cfg: PBTConfig, url: str) -> None:
    from pbt_ray.dialogue.pipeline import request_models
    from pbt_ray.serving.client import preflight

    asyncio.run(preflight(url, sorted(set(request_models(cfg).values()))))


def debate(cfg: PBTConfig, url: str, question: str | None = None) -> Tree:
    """One evaluation-mode dialogue (standard prompt, greedy) on one question, grown like any tree."""
    from pbt_ray.dialogue.growth import GrowthEngine
    from pbt_ray.dialogue.pipeline import request_models
    from pbt_ray.questions import Question, load_bundled
    from pbt_ray.serving.chat_format import chat_formats
    from pbt_ray.serving.client import ChatClient

    text = question or cfg.debate.question
    q = load_bundled("trivia")[0] if text is None else Question(id="debate", question=text, answers=["?"])
    grow_cfg = GrowConfig(mode="eval", depth=cfg.debate.turns, max_tokens=cfg.debate.max_tokens, seed=cfg.grow.seed,
                          persuader=cfg.grow.persuader, independent_first=cfg.grow.independent_first)

    async def hold() -> Tree:
        client = ChatClient(url, timeout_s=cfg.serve.request_timeout_s, max_retries=0,  # the engine retries
                            formats=chat_formats(cfg))
        try:
            (tree,) = await GrowthEngine(client, grow_cfg, request_models(cfg), cfg.extract.mode).grow([q])
            return tree
        finally:
            await client.close()

    tree = asyncio.run(hold())
    if text is not None:
        tree.gold = []  # a free-form question has no gold answers: correctness is unknown, not wrong
        for node in tree.nodes:
            node.correct = None
    return tree


LOOP_STAGES = ("debate", "grow", "mine", "train", "eval", "report")
ROUND_STAGES = LOOP_STAGES[1:]  # later rounds hold no demo debate
FEEDS_LATER_ROUNDS = ("debate", "grow", "mine", "train")  # redoing one of these makes later rounds stale
STATE_FILE = "loop_state.json"
STATE_VERSION = 1


class LoopError(ValueError):
    """The run directory cannot be continued (another version's state, an unknown stage)."""


def round_dir(cfg: PBTConfig, k: int) -> Path:
    """Round 1 is the run directory itself (a one-round run looks as it always did); round k >= 2 is a
    complete run directory of its own under it: ``<run dir>/round-k``."""
    return cfg.run_dir if k == 1 else cfg.run_dir / f"round-{k}"


def eval_label(k: int) -> str:
    """What the report calls round k's trained model: ``trained`` (round 1), ``trained-round-k``."""
    return "trained" if k == 1 else f"trained-round-{k}"


def round_config(cfg: PBTConfig, k: int, previous_model: Path | None = None) -> PBTConfig:
    """The config of round ``k``. Round 1 is ``cfg``. Round k >= 2 lives in :func:`round_dir`, serves
    ``previous_model`` (round k-1's merged model) as ``pbt-trained`` in the roles of ``cfg.feed_roles``,
    samples with a new seed, and trains its adapter from ``previous_model`` (so DPO's reference, the
    adapter-disabled model, is the previous round's policy). The mining seed stays, so the held-out test
    questions are the same in every round."""
    if k == 1:
        return cfg
    if previous_model is None:
        raise LoopError(f"round {k} needs round {k - 1}'s trained model")
    from pbt_ray.serving.trained import TRAINED_ID, with_trained_model

    fed = with_trained_model(cfg, previous_model)
    serve = fed.serve.model_copy(update={"roles": {**fed.serve.roles, **{r: TRAINED_ID for r in cfg.feed_roles}}})
    train = cfg.train.model_copy(update={"base_model": str(Path(previous_model).resolve()), "pairs": None,
                                         "run_name": f"{cfg.train.run_name}-round-{k}"})
    grow = cfg.grow.model_copy(update={"seed": cfg.grow.seed + k - 1})
    return cfg.model_copy(update={"runs_dir": str(cfg.run_dir), "name": f"round-{k}", "serve": serve,
                                  "train": train, "grow": grow})


def load_state(run_dir: Path, from_stage: str | None = None, stages: tuple[str, ...] = LOOP_STAGES) -> dict:
    """Which stages of this run directory are finished; ``from_stage`` forgets it and every later one."""
    path = Path(run_dir) / STATE_FILE
    state = {"version": STATE_VERSION, "done": {}}
    if path.is_file():
        state = json.loads(path.read_text())
        if state.get("version") != STATE_VERSION:
            raise LoopError(f"{run_dir} was written by another pbt-ray version (loop state version "
                            f"{state.get('version')!r}, this one reads {STATE_VERSION}); use a new run name "
                            "(name=...) or move the directory away. Finished results stay where they are.")
    if from_stage is not None:
        if from_stage not in stages:
            raise LoopError(f"--from {from_stage}: not a stage of this round; stages are {', '.join(stages)}")
        for stage in stages[stages.index(from_stage):]:
            state["done"].pop(stage, None)
    return state


def mark_done(run_dir: Path, state: dict, stage: str, info: dict | None = None) -> None:
    state["done"][stage] = info or {}
    path = Path(run_dir) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{STATE_FILE}.tmp")
    tmp.write_text(json.dumps(state, indent=2, default=str) + "\n")
    tmp.replace(path)


def retire_later_rounds(cfg: PBTConfig, k: int, log=print) -> None:
    """Redoing round k makes every later round stale: their directories are moved aside, never deleted."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rounds = ((re.fullmatch(r"round-(\d+)", p.name), p) for p in cfg.run_dir.glob("round-*") if p.is_dir())
    for n, path in sorted((int(m.group(1)), p) for m, p in rounds if m and int(m.group(1)) > k):
        aside = path.with_name(f"{path.name}.stale-{stamp}")
        path.rename(aside)
        results = cfg.run_dir / "eval" / eval_label(n)
        if results.is_dir():  # its evaluations leave the report with it
            results.rename(aside / f"eval-{eval_label(n)}")
        log(f"[pbt] round {n} came from the round being redone; moved aside to {aside}")


def run(cfg: PBTConfig, question: str | None = None, log=print, from_stage: str | None = None,
        from_round: int = 1) -> int:
    """The main job, ``cfg.rounds`` times. Round 1: serve; a demo debate (printed); grow; mine; train; serve
    the trained model; evaluate base and trained; report. Round k >= 2 feeds round k-1's trained model back
    in (:func:`round_config`) and evaluates its own trained model next to the earlier ones. Finished stages
    are skipped on a rerun (``loop_state.json`` in each round's directory); ``from_stage`` (of round
    ``from_round``) restarts from a stage, and if that changes the round's model, every later round starts
    over."""
    from pbt_ray.runtime import ray_cluster

    if not 1 <= from_round <= cfg.rounds:
        raise LoopError(f"--round {from_round}: this config runs rounds 1..{cfg.rounds} (rounds={cfg.rounds})")
    if from_stage is not None:
        load_state(round_dir(cfg, from_round), from_stage, _stages(from_round))  # a bad --from moves nothing
        if from_stage in FEEDS_LATER_ROUNDS:  # a new model for the next round; eval and report change none
            retire_later_rounds(cfg, from_round, log)
    states = {k: load_state(round_dir(cfg, k), from_stage if k == from_round else None, _stages(k))
              for k in range(1, cfg.rounds + 1)}
    todo = {k: [s for s in _stages(k) if s not in states[k]["done"]] for k in states}
    if not any(todo.values()):
        log(f"[pbt] every stage of {cfg.run_dir} is done; `pbt run --from STAGE [--round K]` redoes one "
            f"({', '.join(LOOP_STAGES)})")
        return 0
    ok = True
    with ray_cluster(cfg, log=log):
        for k in range(1, cfg.rounds + 1):
            if not todo[k]:
                continue
            if cfg.rounds > 1:
                log(f"\n[pbt] ===== round {k} of {cfg.rounds} ({round_dir(cfg, k)}) =====")
            skipped = [s for s in _stages(k) if s in states[k]["done"]]
            if skipped:
                log(f"[pbt] already done, skipped: {', '.join(skipped)}")
            previous = None
            if k > 1:
                previous = trained_model(round_dir(cfg, k - 1), log)
                if previous is None:
                    log(f"[pbt] round {k} not run: round {k - 1} trained no model "
                        f"({states[k - 1]['done'].get('train', {}).get('skipped', 'see its train stage')}); "
                        "the rounds stop here")
                    break
            ok = _round(cfg, k, round_config(cfg, k, previous), states[k], todo[k], question, log) and ok
    return 0 if ok else 1


def _stages(k: int) -> tuple[str, ...]:
    return LOOP_STAGES if k == 1 else ROUND_STAGES


def trained_model(run_dir: Path, log=print) -> Path | None:
    """The merged model of a round's adapter (merged once), or None if the round trained none."""
    from pbt_ray.serving.trained import has_adapter, merged_model

    return merged_model(run_dir, log=log) if has_adapter(run_dir) else None


def _round(top: PBTConfig, k: int, cfg: PBTConfig, state: dict, todo: list[str], question: str | None, log) -> bool:
    ok = True
    if set(todo) & {"debate", "grow", "eval"}:
        with debater_endpoint(cfg, log=log) as url:
            ok = _serve_stages(top, k, cfg, state, url, question, log)
    if "report" in todo:
        from pbt_ray.evaluation.report import ReportError, write_report

        try:
            write_report(top.run_dir, log=log)  # every round's evaluations, side by side
            mark_done(cfg.run_dir, state, "report")
        except ReportError as exc:
            log(f"[pbt] report skipped: {exc}")
    return ok


def _serve_stages(top: PBTConfig, k: int, cfg: PBTConfig, state: dict, url: str, question: str | None, log) -> bool:
    from pbt_ray.dialogue.pipeline import grow_trees
    from pbt_ray.dialogue.view import render_text

    ok = True
    done = state["done"]
    if k == 1 and "debate" not in done:
        tree = debate(cfg, url, question)
        log("\n" + render_text(tree, color=sys.stdout.isatty()))
        out = cfg.run_dir / "debate.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(to_row(tree), indent=2) + "\n")
        log(f"[pbt] debate written to {out}\n")
        ok = tree.status == "complete"
        mark_done(cfg.run_dir, state, "debate")
    if "grow" not in done:
        summary = grow_trees(cfg, url, log=log)
        log(format_grow_summary(summary, cfg))
        ok = ok and summary.failed == 0
        if summary.failed == 0:
            mark_done(cfg.run_dir, state, "grow", {"trees": summary.grown + summary.already_done})
    if "mine" not in done:
        stats = mine_stage(cfg, url, log)
        mark_done(cfg.run_dir, state, "mine", {"selected": stats["selected"]})
    if "train" not in done:
        _train_stage(cfg, state, log)
    if "eval" not in done:
        _eval_stage(top, k, cfg, state, url, log)
    return ok


def mine_stage(cfg: PBTConfig, url: str, log=print) -> dict:
    """Mine the round's trees (<round dir>/trees) into <round dir>/preferences; with ``mine.stance_check``
    every pair's reply stances are confirmed by the app's extractor first (PBT_SPEC.md §2.6-2.7)."""
    from pbt_ray.dialogue.pipeline import request_models
    from pbt_ray.preferences.mining import mine
    from pbt_ray.preferences.stance import endpoint_stance_check
    from pbt_ray.serving.chat_format import chat_formats

    check = None
    if cfg.mine.stance_check:
        check = endpoint_stance_check(url, request_models(cfg)["extractor"], cfg.serve.request_timeout_s,
                                      formats=chat_formats(cfg))
    return mine(cfg, trees=str(cfg.run_dir), out=str(cfg.run_dir / "preferences"), stance_check=check, log=log)


def _train_stage(cfg: PBTConfig, state: dict, log) -> None:
    from pbt_ray.training.data import TrainDataError
    from pbt_ray.training.launch import prepare, train

    try:
        plan = prepare(cfg, str(cfg.run_dir / "preferences"), log=log)
    except TrainDataError as exc:  # e.g. the embedded model's trees gave no trainable pairs
        log(f"[pbt] train skipped: {exc}")
        mark_done(cfg.run_dir, state, "train", {"skipped": str(exc)})
        return
    metrics = train(cfg, str(cfg.run_dir / "preferences"), log=log, plan=plan)
    mark_done(cfg.run_dir, state, "train", {"adapter": metrics.get("adapter"), "global_step": metrics.get("global_step")})


def _eval_stage(top: PBTConfig, k: int, cfg: PBTConfig, state: dict, url: str, log) -> None:
    """Round 1: the configured suites on the base model (the app's persuadee) and on the trained model;
    round k >= 2: on its trained model only (the earlier rounds' results are its baseline). Every round
    evaluates on round 1's held-out items and writes under the run directory's ``eval/<label>``, so the
    report compares base and every round on the same items."""
    from pbt_ray.evaluation.stage import EvalError, evaluate
    from pbt_ray.serving.trained import TRAINED_ROLE, has_adapter

    def run_suites(label: str, endpoint: str, model: str | None, serve, team=None) -> None:
        # The evaluated model answers the single-model suites; the team debate seats eval.team's models, with
        # the trained ones in their seats for the trained evaluation (trained_seats).
        ecfg = top.model_copy(update={"serve": serve, "eval": top.eval.model_copy(
            update={"model": model, **({"team": team} if team is not None else {})})})
        for suite in top.eval.suites:
            try:
                evaluate(ecfg, suite, endpoint, label=label, log=log)
            except EvalError as exc:
                log(f"[pbt] eval {suite} ({label}) skipped: {exc}")

    if k == 1:
        run_suites("base", url, None, cfg.serve)
    if has_adapter(cfg.run_dir):
        with trained_endpoint(cfg, log) as (trained_url, tcfg):
            run_suites(eval_label(k), trained_url, TRAINED_ROLE, tcfg.serve, trained_seats(top, tcfg))
    mark_done(cfg.run_dir, state, "eval")


def seat_model_id(seat: str) -> str:
    """The served id of another run's trained model seated in ``seat`` of the team debate."""
    return f"pbt-trained-{seat}"


def trained_seats(top: PBTConfig, tcfg: PBTConfig):
    """eval.team for the trained evaluation: a seat whose ``trained`` is 'this-run' takes this run's trained
    model (role ``trained`` of ``tcfg``), a seat naming another run directory takes that run's trained model
    (added to the app by :func:`trained_endpoint`), any other seat keeps its base model."""
    from pbt_ray.serving.trained import TRAINED_ROLE

    seats = {}
    for name in ("strong", "weak"):
        seat = getattr(top.eval.team, name)
        if seat.trained == "this-run":
            seats[name] = seat.model_copy(update={"model": TRAINED_ROLE})
        elif seat.trained:
            seats[name] = seat.model_copy(update={"model": seat_model_id(name)})
        else:
            seats[name] = seat.model_copy(update={"model": top.seat_model(name)})
    return top.eval.team.model_copy(update=seats)


@contextlib.contextmanager
def trained_endpoint(cfg: PBTConfig, log=print) -> Iterator[tuple[str, PBTConfig]]:
    """The debater app updated in place with the run's trained model added (role ``trained``): the
    debaters' deployments keep running, and the same extractor scores base and trained answers."""
    from pbt_ray.serving.app import deploy, wait_ready
    from pbt_ray.serving.trained import merged_model, with_trained_model

    tcfg = with_trained_model(cfg, merged_model(cfg.run_dir, log=log))
    for name in ("strong", "weak"):  # another run's trained model in a team seat: served next to ours
        seat = getattr(cfg.eval.team, name)
        if seat.trained and seat.trained != "this-run":
            from pbt_ray.serving.trained import has_adapter

            if not has_adapter(seat.trained):
                raise LoopError(f"eval.team.{name}.trained: {seat.trained} holds no trained adapter "
                                f"({seat.trained}/adapter); finish that run first or set it to null")
            tcfg = with_trained_model(tcfg, merged_model(seat.trained, log=log), model_id=seat_model_id(name),
                                      role=None, base_id=cfg.seat_model(name))
    deploy(tcfg, log=log)
    yield wait_ready(tcfg, log=log), tcfg


def format_grow_summary(summary, cfg: PBTConfig) -> str:
    lines = [
        f"[pbt] trees: {summary.grown} grown, {summary.already_done} already done, {summary.failed} failed, "
        f"{len(summary.problems)} bad question rows; {summary.turns} turns, {summary.generated_tokens} generated "
        f"tokens in {summary.seconds:.1f} s ({summary.tokens_per_s:.0f} tok/s)",
        f"[pbt] trees in {cfg.run_dir / 'trees'}; look at one with: pbt view {cfg.run_dir}",
    ]
    if summary.turns:
        reads = summary.reads
        by = ", ".join(f"{key.split(':', 1)[1]} {n}" for key, n in sorted(reads.items()) if key.startswith("read_by:"))
        interval = (f", 95% CI {summary.none_rate_ci95[0]:.1%}-{summary.none_rate_ci95[1]:.1%} over trees"
                    if summary.none_rate_ci95 else "")
        lines.insert(1, f"[pbt] answers read (extract.mode {cfg.extract.mode}): NONE in {reads.get('none', 0)} of "
                        f"{summary.turns} turns ({summary.none_rate:.1%}{interval}); answer {reads.get('answer', 0)}, agree "
                        f"{reads.get('agree', 0)}, disagree {reads.get('disagree', 0)}; read by {by}")
    lines += [f"[pbt] failed: {failure}" for failure in summary.failures[:10]]
    return "\n".join(lines)
