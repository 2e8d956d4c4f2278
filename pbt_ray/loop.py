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

from pbt_ray import tracking
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
    from pbt_ray.serving.auth import client_key
    from pbt_ray.serving.client import preflight

    asyncio.run(preflight(url, sorted(set(request_models(cfg).values())), api_key=client_key(cfg.serve)))


def debate(cfg: PBTConfig, url: str, question: str | None = None) -> Tree:
    """One evaluation-mode dialogue (standard prompt, greedy) on one question, grown like any tree."""
    from pbt_ray.dialogue.growth import GrowthEngine
    from pbt_ray.dialogue.pipeline import request_models
    from pbt_ray.questions import Question, load_bundled
    from pbt_ray.serving.auth import client_key
    from pbt_ray.serving.chat_format import chat_formats
    from pbt_ray.serving.client import ChatClient

    text = question or cfg.debate.question
    q = load_bundled("trivia")[0] if text is None else Question(id="debate", question=text, answers=["?"])
    grow_cfg = GrowConfig(mode="eval", depth=cfg.debate.turns, max_tokens=cfg.debate.max_tokens, seed=cfg.grow.seed,
                          persuader=cfg.grow.persuader, independent_first=cfg.grow.independent_first)

    async def hold() -> Tree:
        client = ChatClient(url, timeout_s=cfg.serve.request_timeout_s, max_retries=0,  # the engine retries
                            formats=chat_formats(cfg), api_key=client_key(cfg.serve))
        try:
            (tree,) = await GrowthEngine(client, grow_cfg, request_models(cfg), cfg.extract.mode,
                                         retry_window_s=cfg.serve.retry_window_s).grow([q])
            return tree
        finally:
            await client.close()

    tree = asyncio.run(hold())
    if text is not None:
        tree.gold = []  # a free-form question has no gold answers: correctness is unknown, not wrong
        for node in tree.nodes:
            node.correct = None
    return tree


from pbt_ray.stages import PBT_STAGES, StageError, StageState, downstream, files_digest, fingerprint, stage_named, status

LOOP_STAGES = tuple(stage.name for stage in PBT_STAGES)
ROUND_STAGES = LOOP_STAGES[1:]  # later rounds hold no demo debate
FEEDS_LATER_ROUNDS = ("debate", "grow", "mine", "train")  # redoing one of these makes later rounds stale
STATE_FILE = "loop_state.json"


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


def load_state(run_dir: Path) -> StageState:
    """The stage records of a round's directory (``loop_state.json``, :mod:`pbt_ray.stages`)."""
    try:
        return StageState.load(Path(run_dir))
    except StageError as exc:
        raise LoopError(str(exc)) from None


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


def _stages(k: int):
    return PBT_STAGES if k == 1 else PBT_STAGES[1:]


def _round_inputs(cfg: PBTConfig, states: dict[int, StageState], k: int) -> tuple[dict, dict]:
    """(round k's dumped config, extra fingerprint inputs per stage). Round k >= 2 grows and trains from round
    k-1's trained model: its digest is an input of those stages, so a retrained round k-1 makes them stale."""
    config = round_config(cfg, k, round_dir(cfg, k - 1) / "merged" if k > 1 else None).model_dump(mode="json")
    if k == 1:
        return config, {}
    previous = states[k - 1].outputs().get("train")
    return config, {name: {"previous_round_model": previous} for name in ("grow", "train", "eval")}


def plan(cfg: PBTConfig, states: dict[int, StageState]) -> dict[int, list[tuple[str, str, str]]]:
    """Each round's stages as a rerun finds them: (stage, done | stale | to run, why)."""
    out = {}
    for k in states:
        config, extra = _round_inputs(cfg, states, k)
        verdicts = status(_stages(k), config, states[k], extra)
        if k > 1 and any(v != "done" for n, v, _w in out[k - 1] if n in FEEDS_LATER_ROUNDS):
            verdicts = [(n, v if v != "done" else "to run", w if v != "done" else f"after round {k - 1}")
                        for n, v, w in verdicts]
        out[k] = verdicts
    return out


def format_plan(cfg: PBTConfig, plans: dict[int, list[tuple[str, str, str]]]) -> str:
    lines = [f"[pbt] {cfg.run_dir}: what `pbt run` would do"]
    for k, verdicts in plans.items():
        if len(plans) > 1:
            lines.append(f"  round {k} ({round_dir(cfg, k)})")
        for name, verdict, why in verdicts:
            lines.append(f"    {name:<8} {verdict:<7} {why}")
    return "\n".join(lines)


def run(cfg: PBTConfig, question: str | None = None, log=print, from_stage: str | None = None,
        from_round: int = 1, dry_run: bool = False) -> int:
    """The main job, ``cfg.rounds`` times. Round 1: serve; a demo debate (printed); grow; mine; train; serve
    the trained model; evaluate base and trained; report. Round k >= 2 feeds round k-1's trained model back
    in (:func:`round_config`) and evaluates its own trained model next to the earlier ones.

    Each stage runs when its fingerprint (:mod:`pbt_ray.stages`: its config slice and its inputs' digests)
    differs from the one recorded in the round's ``loop_state.json``, or its last run was incomplete; then
    everything that reads it follows. ``from_stage`` (of round ``from_round``) forces a stage and everything
    after it; if that changes the round's model, later rounds are moved aside and start over. ``dry_run``
    prints the plan and changes nothing."""
    from pbt_ray.recipes import recipe_of, run_recipe
    from pbt_ray.runtime import ray_cluster

    recipe = recipe_of(cfg)
    if recipe is not None:  # another recipe: a declaration of stages on the shared runner (pbt_ray/recipes.py)
        return run_recipe(cfg, recipe, log, from_stage, from_round, dry_run)
    states = check_run(cfg, from_stage, from_round)
    if from_stage is not None:
        if not dry_run and from_stage in FEEDS_LATER_ROUNDS:  # a new model for the next round
            retire_later_rounds(cfg, from_round, log)
            states.update({k: StageState(round_dir(cfg, k)) for k in states if k > from_round})
        states[from_round].forget(downstream(_stages(from_round), from_stage), save=not dry_run)
    if not dry_run:
        for k in states:
            _adopt_legacy(cfg, states, k, log)
    plans = plan(cfg, states)
    if dry_run:
        log(format_plan(cfg, plans))
        return 0
    if all(v == "done" for verdicts in plans.values() for _, v, _ in verdicts):
        log(f"[pbt] every stage of {cfg.run_dir} is done; `pbt run --from STAGE [--round K]` redoes one "
            f"({', '.join(LOOP_STAGES)}); `pbt run --dry-run` shows the plan")
        return 0
    ok = True
    with ray_cluster(cfg, log=log), tracking.session(cfg, log):
        for k in range(1, cfg.rounds + 1):
            verdicts = plan(cfg, states)[k]
            if all(v == "done" for _, v, _ in verdicts):
                continue
            if cfg.rounds > 1:
                log(f"\n[pbt] ===== round {k} of {cfg.rounds} ({round_dir(cfg, k)}) =====")
            skipped = [n for n, v, _ in verdicts if v == "done"]
            if skipped:
                log(f"[pbt] already done, skipped: {', '.join(skipped)}")
            for name, verdict, why in verdicts:
                if verdict == "stale":
                    log(f"[pbt] {name} is stale ({why}): it runs again, and every stage after it")
            previous = None
            if k > 1:
                previous = trained_model(round_dir(cfg, k - 1), log)
                if previous is None:
                    skipped_why = states[k - 1].stages.get("train", {}).get("info", {}).get("skipped")
                    log(f"[pbt] round {k} not run: round {k - 1} trained no model "
                        f"({skipped_why or 'see its train stage'}); the rounds stop here")
                    break
            ok = _round(cfg, k, round_config(cfg, k, previous), states, verdicts, question, log) and ok
    return 0 if ok else 1


def check_run(cfg: PBTConfig, from_stage: str | None = None, from_round: int = 1) -> dict[int, StageState]:
    """The flags and every round's ``loop_state.json``, checked before anything is written or started (`pbt run`
    calls this before it records the command); returns the rounds' states. Raises :class:`LoopError`."""
    from pbt_ray.recipes import check, recipe_of

    recipe = recipe_of(cfg)
    if recipe is not None:
        return check(cfg, recipe, from_stage, from_round)
    if not 1 <= from_round <= cfg.rounds:
        raise LoopError(f"--round {from_round}: this config runs rounds 1..{cfg.rounds} (rounds={cfg.rounds})")
    if from_stage is not None and from_stage not in [s.name for s in _stages(from_round)]:
        raise LoopError(f"--from {from_stage}: not a stage of this round; stages are "
                        f"{', '.join(s.name for s in _stages(from_round))}")
    from pbt_ray.training.launch import TrainError, check_trackers

    try:
        check_trackers(cfg.train.loggers)  # the train stage would refuse it too, after the cluster and the growth
    except TrainError as exc:
        raise LoopError(str(exc)) from None
    return {k: load_state(round_dir(cfg, k)) for k in range(1, cfg.rounds + 1)}


@contextlib.contextmanager
def stage_scope(name: str) -> Iterator[None]:
    """Tag an error leaving a stage with the stage's name: `pbt` names it in the one line it prints (a Ray task's
    error says nothing of which stage ran it)."""
    try:
        yield
    except Exception as exc:
        if getattr(exc, "pbt_stage", None) is None:
            with contextlib.suppress(AttributeError, TypeError):  # some exception types take no attributes
                exc.pbt_stage = name
        raise


def trained_model(run_dir: Path, log=print) -> Path | None:
    """The merged model of a round's adapter (merged once), or None if the round trained none."""
    from pbt_ray.serving.trained import has_adapter, merged_model

    return merged_model(run_dir, log=log) if has_adapter(run_dir) else None


def stage_output(top: PBTConfig, cfg: PBTConfig, name: str) -> str | None:
    """The digest of what a stage left in the round's directory: what the stages after it read."""
    from pbt_ray.stages import digest

    run = cfg.run_dir
    if name == "debate":
        return files_digest([run / "debate.json"])
    if name == "grow":
        from pbt_ray.dialogue.pipeline import finished_tree_ids

        ids = sorted(finished_tree_ids(run))
        return digest(ids) if ids else None
    if name == "mine":
        return files_digest(list((run / "preferences").rglob("*.parquet")))
    if name == "train":
        return files_digest([run / "adapter" / n for n in ("adapter_config.json", "adapter_model.safetensors",
                                                           "adapter_model.bin")])
    if name == "eval":
        return files_digest(list((top.run_dir / "eval").rglob("metrics.json")))
    return files_digest([top.run_dir / "report" / "report.json"])


def _adopt_legacy(cfg: PBTConfig, states: dict[int, StageState], k: int, log) -> None:
    """Stages finished by an older pbt-ray (no fingerprint): taken as done with what they left, said once."""
    legacy = [s for s in _stages(k) if states[k].stages.get(s.name, {}).get("legacy")]
    if not legacy:
        return
    config, extra = _round_inputs(cfg, states, k)
    rcfg = round_config(cfg, k, round_dir(cfg, k - 1) / "merged" if k > 1 else None)
    for stage in legacy:
        fp = fingerprint(stage, config, states[k].outputs(), extra.get(stage.name))
        states[k].record(stage, fp, config, stage_output(cfg, rcfg, stage.name), info={"adopted": True})
    log(f"[pbt] {round_dir(cfg, k)}: took {', '.join(s.name for s in legacy)} as done from an older pbt-ray's "
        "record (no fingerprints then); `pbt run --from STAGE` redoes one")


class _Round:
    """One round's stages, each run when it needs to (:func:`_needs`) and recorded with its output digest."""

    def __init__(self, top: PBTConfig, k: int, cfg: PBTConfig, states: dict[int, StageState], log):
        self.top, self.k, self.cfg, self.log = top, k, cfg, log
        self.state = states[k]
        self.stages = _stages(k)
        self.config, self.extra = _round_inputs(top, states, k)

    def fingerprint(self, name: str) -> str:
        return fingerprint(stage_named(self.stages, name), self.config, self.state.outputs(), self.extra.get(name))

    def needs(self, name: str) -> bool:
        if name not in [s.name for s in self.stages]:
            return False
        seen = self.state.stages.get(name)
        return (seen is None or seen.get("forgotten") or not seen.get("complete", True)
                or seen.get("fingerprint") != self.fingerprint(name))

    def redo(self, name: str) -> bool:
        """Its old outputs are not to be continued: recorded with another fingerprint, or forced (``--from``).
        Merely unfinished (same fingerprint, some items failed) is continued instead."""
        seen = self.state.stages.get(name) or {}
        return bool(seen.get("forgotten")) or (bool(seen.get("fingerprint")) and seen["fingerprint"] != self.fingerprint(name))

    def done(self, name: str, complete: bool = True, info: dict | None = None) -> None:
        from pbt_ray.storage import push_run

        fp = self.fingerprint(name)  # inputs as they were when the stage ran
        self.state.record(stage_named(self.stages, name), fp, self.config,
                          stage_output(self.top, self.cfg, name), complete, info)
        push_run(self.top, self.log)  # a URI runs_dir: the finished stage leaves the node now
        # train.loggers: MLflow / W&B get what the stage left (its eval: only the models this round evaluated)
        tracking.stage_done(name, self.cfg.run_dir, self.top.run_dir, self.k,
                            ("base", eval_label(1)) if self.k == 1 else (eval_label(self.k),))


def _round(top: PBTConfig, k: int, cfg: PBTConfig, states: dict[int, StageState], verdicts, question: str | None,
           log) -> bool:
    ok = True
    r = _Round(top, k, cfg, states, log)
    todo = {n for n, v, _ in verdicts if v != "done"}
    if todo & {"debate", "grow", "mine", "train", "eval"}:
        serving = cfg
        if not todo & {"debate", "grow", "mine", "train"} and not cfg.grow.endpoint:
            from pbt_ray.serving.trained import has_adapter

            if has_adapter(cfg.run_dir):
                # Only the evaluation is left (a rerun after a crash): serve the trained model from the start,
                # so the app is deployed once (and a running one with the same models is kept as it is).
                serving = trained_config(cfg, log)
        with debater_endpoint(serving, log=log) as url:
            ok = _serve_stages(r, url, question)
    if r.needs("report"):
        from pbt_ray.evaluation.report import ReportError, write_report

        try:
            with stage_scope("report"):
                write_report(top.run_dir, log=log)  # every round's evaluations, side by side
            r.done("report")
        except ReportError as exc:
            log(f"[pbt] report skipped: {exc}")
            r.done("report", info={"skipped": str(exc)})
    return ok


def _serve_stages(r: _Round, url: str, question: str | None) -> bool:
    from pbt_ray.dialogue.view import render_text

    ok, cfg, log = True, r.cfg, r.log
    if r.needs("debate"):
        with stage_scope("debate"):
            tree = debate(cfg, url, question)
        log("\n" + render_text(tree, color=sys.stdout.isatty()))
        out = cfg.run_dir / "debate.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(to_row(tree), indent=2) + "\n")
        log(f"[pbt] debate written to {out}\n")
        ok = tree.status == "complete"
        r.done("debate")
    ok = _grow_and_mine(r, url) and ok
    if r.needs("train"):
        with stage_scope("train"):
            info = _train_stage(cfg, r.state.attempt("train"), log)
        r.done("train", info=info)
    if r.needs("eval"):
        with stage_scope("eval"):
            _eval_stage(r.top, r.k, cfg, url, log, attempt_key=f"{r.fingerprint('eval')}-{r.state.attempt('eval')}")
        r.done("eval")
    return ok


def _grow_and_mine(r: _Round, url: str) -> bool:
    """The round's grow and mine stages, each when it needs to run; False if some trees failed."""
    from pbt_ray.dialogue.pipeline import grow_trees

    ok, cfg, log = True, r.cfg, r.log
    if r.needs("grow"):
        if r.redo("grow"):  # grown with other settings, or asked to regrow: kept aside, never mixed with new trees
            _set_aside(cfg.run_dir, ("trees", "failed", "grow_summary.json"), log)
        with stage_scope("grow"):
            summary = grow_trees(cfg, url, log=log)
        log(format_grow_summary(summary, cfg))
        ok = summary.failed == 0
        r.done("grow", complete=summary.failed == 0,
               info={"trees": summary.grown + summary.already_done, "failed": summary.failed})
    if r.needs("mine"):
        with stage_scope("mine"):
            stats = mine_stage(cfg, url, log)
        r.done("mine", info={"selected": stats["selected"]})
    return ok


def grow_and_mine(cfg: PBTConfig, url: str, log=print) -> bool:
    """Round 1's grow and mine as `pbt run` does them (fingerprinted and recorded in the same
    ``loop_state.json``, so a later `pbt run` reuses them): what an experiment trains its conditions from."""
    states = {1: load_state(cfg.run_dir)}
    _adopt_legacy(cfg, states, 1, log)
    return _grow_and_mine(_Round(cfg, 1, cfg, states, log), url)


def _set_aside(run_dir: Path, names: tuple[str, ...], log) -> None:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in names:
        path = run_dir / name
        if path.exists():
            aside = path.with_name(f"{name}.stale-{stamp}")
            path.rename(aside)
            log(f"[pbt] {path} came from other settings; moved aside to {aside}")


def mine_stage(cfg: PBTConfig, url: str, log=print) -> dict:
    """Mine the round's trees (<round dir>/trees) into <round dir>/preferences; with ``mine.stance_check``
    every pair's reply stances are confirmed by the app's extractor first (PBT_SPEC.md §2.6-2.7)."""
    from pbt_ray.dialogue.pipeline import request_models
    from pbt_ray.preferences.mining import mine
    from pbt_ray.preferences.stance import endpoint_stance_check
    from pbt_ray.serving.auth import client_key
    from pbt_ray.serving.chat_format import chat_formats

    check = None
    if cfg.mine.stance_check:
        check = endpoint_stance_check(url, request_models(cfg)["extractor"], cfg.serve.request_timeout_s,
                                      formats=chat_formats(cfg), api_key=client_key(cfg.serve))
    return mine(cfg, trees=str(cfg.run_dir), out=str(cfg.run_dir / "preferences"), stance_check=check, log=log)


def _train_stage(cfg: PBTConfig, attempt: int, log) -> dict:
    """Train, or say why not; ``attempt`` counts `--from train` requests, so a forced rerun trains afresh
    instead of resuming the finished Ray Train run of the same fingerprint."""
    from pbt_ray.training.data import TrainDataError
    from pbt_ray.training.launch import prepare, train

    try:
        plan_ = prepare(cfg, str(cfg.run_dir / "preferences"), log=log)
    except TrainDataError as exc:  # e.g. the embedded model's trees gave no trainable pairs
        log(f"[pbt] train skipped: {exc}")
        _set_aside(cfg.run_dir, ("adapter", "train_metrics.json", "merged"), log)  # an older adapter is not this data's
        return {"skipped": str(exc)}
    metrics = train(cfg, str(cfg.run_dir / "preferences"), log=log, plan=plan_, attempt=attempt)
    return {"adapter": metrics.get("adapter"), "global_step": metrics.get("global_step"),
            "run_name": metrics.get("run_name")}


def _eval_stage(top: PBTConfig, k: int, cfg: PBTConfig, url: str, log, attempt_key: str | None = None) -> None:
    """Round 1: the configured suites on the base model (the app's persuadee) and on the trained model;
    round k >= 2: on its trained model only (the earlier rounds' results are its baseline). Every round
    evaluates on round 1's held-out items and writes under the run directory's ``eval/<label>``, so the
    report compares base and every round on the same items. ``attempt_key`` (the stage's fingerprint): suites an
    interrupted attempt of this same stage finished are kept, not evaluated again."""
    from pbt_ray.serving.trained import TRAINED_ROLE, has_adapter

    if k == 1:
        evaluate_suites(top, "base", url, None, cfg.serve, log=log, attempt_key=attempt_key)
    if has_adapter(cfg.run_dir):
        with trained_endpoint(cfg, log) as (trained_url, tcfg):
            evaluate_suites(top, eval_label(k), trained_url, TRAINED_ROLE, tcfg.serve, trained_seats(top, tcfg), log=log,
                            attempt_key=attempt_key)


def evaluate_suites(top: PBTConfig, label: str, endpoint: str, model: str | None, serve, team=None, *,
                    suites=None, log=print, **where) -> dict[str, dict]:
    """Every suite of ``suites`` (default eval.suites) on one model: ``model`` (None: the served base) answers the
    single-model suites; the team debate seats eval.team's models, with the trained ones in their seats for a
    trained evaluation (:func:`trained_seats`). ``where``: evaluate()'s out_dir, pairs, targets_file, attempt_key. A suite
    that cannot run (no items) is skipped with the reason; returns {suite: summary} of those that ran."""
    from pbt_ray.evaluation.stage import EvalError, evaluate

    ecfg = top.model_copy(update={"serve": serve, "eval": top.eval.model_copy(
        update={"model": model, **({"team": team} if team is not None else {})})})
    out = {}
    for suite in suites or top.eval.suites:
        try:
            out[suite] = evaluate(ecfg, suite, endpoint, label=label, log=log, **where)
        except EvalError as exc:
            log(f"[pbt] eval {suite} ({label}) skipped: {exc}")
    return out


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
    debaters' deployments keep running (:func:`pbt_ray.serving.app.with_stable_versions`), and the same
    extractor scores base and trained answers."""
    from pbt_ray.serving.app import deploy, wait_ready

    tcfg = trained_config(cfg, log)
    deploy(tcfg, log=log)
    yield wait_ready(tcfg, log=log), tcfg


def trained_config(cfg: PBTConfig, log=print) -> PBTConfig:
    """``cfg`` with the run's trained model (merged once) served as role ``trained``, and another run's trained
    model in a team seat that names one."""
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
    return tcfg


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
