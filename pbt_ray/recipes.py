"""Recipes: a declaration of stages over the shared parts, run round after round by one runner.

A :class:`Recipe` names its stages (:class:`pbt_ray.stages.Stage`: what each reads and which config it depends
on), says what the Serve app holds in a round (``serving``), runs one stage (``run_stage``) and digests what a stage
left (``output``). :func:`run_recipe` does the rest, the same for every recipe: one ``loop_state.json`` per round
directory, a stage run only when its fingerprint (its config slice, its inputs' digests and the previous round's
trained models) changed or its last run was incomplete, ``--from``, ``--dry-run``, the in-process cluster and the
app. PBT (``recipe: pbt``) runs on :mod:`pbt_ray.loop`, which predates this runner and uses the same stage records;
``recipe: redteam`` (:mod:`pbt_ray.redteam.recipe`) is a declaration on this runner.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pbt_ray.config import PBTConfig
from pbt_ray.loop import round_dir  # one layout of round directories for every recipe
from pbt_ray.stages import Stage, StageState, downstream, fingerprint, stage_named, status


@dataclass
class Step:
    """One round of a recipe as a stage sees it."""

    cfg: PBTConfig  # the run's config (the same for every round)
    k: int
    dir: Path  # the round's directory (round 1: the run directory)
    state: StageState
    states: dict[int, StageState]
    log: Callable[..., None]
    url: str | None = None  # the app's OpenAI base URL while the round's serving stages run
    serve_cfg: PBTConfig | None = None  # what the app holds now (a stage may add models to it)


@dataclass(frozen=True)
class Recipe:
    name: str
    stages: tuple[Stage, ...]
    run_stage: Callable[[Step, str], dict | None]  # runs one stage; returns its info ({"complete": False} to rerun)
    output: Callable[[Step, str], str | None]  # digest of what the stage left, read by the stages after it
    serving: Callable[[Step], PBTConfig]  # the app of the round (e.g. base + the previous round's trained models)
    serves: frozenset[str] = frozenset()  # stages that need the app running
    feeds_later: tuple[str, ...] = ("train",)  # stages whose output the next round starts from
    describe: str = ""


class RecipeError(ValueError):
    """A flag or a run directory this recipe cannot run with; one line that says what to do."""


def _extra(recipe: Recipe, states: dict[int, StageState], k: int) -> dict[str, dict]:
    if k == 1:
        return {}
    previous = {name: states[k - 1].outputs().get(name) for name in recipe.feeds_later}
    return {s.name: {"previous_round": previous} for s in recipe.stages}


def check(cfg: PBTConfig, recipe: Recipe, from_stage: str | None, from_round: int) -> dict[int, StageState]:
    if not 1 <= from_round <= cfg.rounds:
        raise RecipeError(f"--round {from_round}: this config runs rounds 1..{cfg.rounds} (rounds={cfg.rounds})")
    if from_stage is not None and from_stage not in [s.name for s in recipe.stages]:
        raise RecipeError(f"--from {from_stage}: not a stage of recipe {recipe.name}; stages are "
                          f"{', '.join(s.name for s in recipe.stages)}")
    from pbt_ray.stages import StageError

    try:
        return {k: StageState.load(round_dir(cfg, k)) for k in range(1, cfg.rounds + 1)}
    except StageError as exc:
        raise RecipeError(str(exc)) from None


def plan(cfg: PBTConfig, recipe: Recipe, states: dict[int, StageState]) -> dict[int, list[tuple[str, str, str]]]:
    config = cfg.model_dump(mode="json")
    out: dict[int, list] = {}
    for k in states:
        verdicts = status(recipe.stages, config, states[k], _extra(recipe, states, k))
        if k > 1 and any(v != "done" for n, v, _ in out[k - 1] if n in recipe.feeds_later):
            verdicts = [(n, v if v != "done" else "to run", w if v != "done" else f"after round {k - 1}")
                        for n, v, w in verdicts]
        out[k] = verdicts
    return out


def format_plan(cfg: PBTConfig, recipe: Recipe, plans: dict) -> str:
    lines = [f"[pbt] {cfg.run_dir} (recipe {recipe.name}): what `pbt run` would do"]
    for k, verdicts in plans.items():
        if len(plans) > 1:
            lines.append(f"  round {k} ({round_dir(cfg, k)})")
        lines += [f"    {name:<8} {verdict:<7} {why}" for name, verdict, why in verdicts]
    return "\n".join(lines)


def run_recipe(cfg: PBTConfig, recipe: Recipe, log=print, from_stage: str | None = None, from_round: int = 1,
               dry_run: bool = False) -> int:
    """Every round of ``recipe``: the stages that need to run, in order, each recorded when it finishes."""
    from pbt_ray import tracking
    from pbt_ray.loop import debater_endpoint, stage_scope
    from pbt_ray.runtime import ray_cluster

    states = check(cfg, recipe, from_stage, from_round)
    if from_stage is not None:
        states[from_round].forget(downstream(recipe.stages, from_stage), save=not dry_run)
    plans = plan(cfg, recipe, states)
    if dry_run:
        log(format_plan(cfg, recipe, plans))
        return 0
    if all(v == "done" for verdicts in plans.values() for _, v, _ in verdicts):
        log(f"[pbt] every stage of {cfg.run_dir} is done; `pbt run --from STAGE [--round K]` redoes one "
            f"({', '.join(s.name for s in recipe.stages)}); `pbt run --dry-run` shows the plan")
        return 0
    ok = True
    config = cfg.model_dump(mode="json")
    with ray_cluster(cfg, log=log), tracking.session(cfg, log):
        for k in range(1, cfg.rounds + 1):
            verdicts = plan(cfg, recipe, states)[k]
            if all(v == "done" for _, v, _ in verdicts):
                continue
            if cfg.rounds > 1:
                log(f"\n[pbt] ===== {recipe.name} round {k} of {cfg.rounds} ({round_dir(cfg, k)}) =====")
            skipped = [n for n, v, _ in verdicts if v == "done"]
            if skipped:
                log(f"[pbt] already done, skipped: {', '.join(skipped)}")
            for name, verdict, why in verdicts:
                if verdict == "stale":
                    log(f"[pbt] {name} is stale ({why}): it runs again, and every stage after it")
            step = Step(cfg, k, round_dir(cfg, k), states[k], states, log)
            todo = [stage_named(recipe.stages, n) for n, v, _ in verdicts if v != "done"]
            serving = contextlib.nullcontext(None)
            if any(s.name in recipe.serves for s in todo):
                step.serve_cfg = recipe.serving(step)
                serving = debater_endpoint(step.serve_cfg, log=log)
            with serving as url:
                step.url = url
                for stage in todo:
                    extra = _extra(recipe, states, k).get(stage.name)
                    fp = fingerprint(stage, config, states[k].outputs(), extra)  # the inputs it ran on
                    with stage_scope(stage.name):
                        info = recipe.run_stage(step, stage.name) or {}
                    complete = info.pop("complete", True)
                    ok = ok and complete
                    states[k].record(stage, fp, config, recipe.output(step, stage.name), complete, info)
                    if not complete:
                        log(f"[pbt] {stage.name} did not finish every item ({info}); a rerun continues it")
                        return 1
    return 0 if ok else 1


# ---- shared by the recipes' stage functions -------------------------------------------------------------------

def chat_client(cfg: PBTConfig, url: str):
    """(raw client to close, retrying client): the OpenAI client every recipe stage uses against the app, as the
    evaluations do: a deadline per request, waiting through a replica restart (serving/retry.py), the app's token."""
    from pbt_ray.serving.auth import client_key
    from pbt_ray.serving.chat_format import chat_formats
    from pbt_ray.serving.client import ChatClient
    from pbt_ray.serving.retry import RetryingClient, RetryPolicy

    raw = ChatClient(url, timeout_s=cfg.serve.request_timeout_s, formats=chat_formats(cfg),
                     api_key=client_key(cfg.serve), max_retries=0)
    return raw, RetryingClient(raw, RetryPolicy(window_s=cfg.serve.retry_window_s))


def set_aside(role_dir: Path, log, names: tuple[str, ...] = ("adapter", "merged")) -> None:
    """A role's older adapter (and its merged model) is not this round's data: moved aside, never deleted."""
    import time

    for name in names:
        path = role_dir / name
        if path.exists():
            aside = path.with_name(f"{name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
            path.rename(aside)
            log(f"[pbt] {path} came from other data; moved aside to {aside}")


def adapter_digest(role_dir: Path) -> str | None:
    from pbt_ray.stages import files_digest

    return files_digest([role_dir / "adapter" / f for f in ("adapter_config.json", "adapter_model.safetensors")])


def run_output(step: Step, name: str) -> str | None:
    """The digest of the stages every recipe ends with, which write under the run directory: eval, report."""
    from pbt_ray.stages import files_digest

    top = step.cfg.run_dir
    if name == "eval":
        return files_digest(list((top / "eval").rglob("metrics.json")))
    return files_digest([top / "report" / "report.json"])


def registry() -> dict[str, Callable[[], Recipe]]:
    """recipe name -> its declaration (imported lazily: a recipe's modules load only when it runs)."""
    def redteam() -> Recipe:
        from pbt_ray.redteam.recipe import RECIPE

        return RECIPE

    def advisor() -> Recipe:
        from pbt_ray.advisor.recipe import RECIPE

        return RECIPE

    return {"redteam": redteam, "advisor": advisor}


def recipe_of(cfg: PBTConfig) -> Recipe | None:
    """The declaration ``cfg.recipe`` names; None for pbt (:mod:`pbt_ray.loop`)."""
    return None if cfg.recipe == "pbt" else registry()[cfg.recipe]()

