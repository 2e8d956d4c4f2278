"""The loop's stages, composed: what `pbt run` and the `jobs/` entrypoints call.

serve -> debate -> grow -> mine -> train -> serve the trained model -> evaluate (base and trained) ->
report, under one run directory; each finished stage is recorded in ``loop_state.json`` and skipped on a
rerun.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Iterator

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
    from pbt_ray.serving.client import ChatClient

    text = question or cfg.debate.question
    q = load_bundled("trivia")[0] if text is None else Question(id="debate", question=text, answers=["?"])
    grow_cfg = GrowConfig(mode="eval", depth=cfg.debate.turns, max_tokens=cfg.debate.max_tokens, seed=cfg.grow.seed,
                          persuader=cfg.grow.persuader, independent_first=cfg.grow.independent_first)

    async def hold() -> Tree:
        client = ChatClient(url, timeout_s=cfg.serve.request_timeout_s, max_retries=0)  # the engine retries
        try:
            (tree,) = await GrowthEngine(client, grow_cfg, request_models(cfg)).grow([q])
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
STATE_FILE = "loop_state.json"
STATE_VERSION = 1


class LoopError(ValueError):
    """The run directory cannot be continued (another version's state, an unknown stage)."""


def load_state(cfg: PBTConfig, from_stage: str | None = None) -> dict:
    """Which stages of this run directory are finished; ``from_stage`` forgets it and every later one."""
    path = cfg.run_dir / STATE_FILE
    state = {"version": STATE_VERSION, "done": {}}
    if path.is_file():
        state = json.loads(path.read_text())
        if state.get("version") != STATE_VERSION:
            raise LoopError(f"{cfg.run_dir} was written by another pbt-ray version (loop state version "
                            f"{state.get('version')!r}, this one reads {STATE_VERSION}); use a new run name "
                            "(name=...) or move the directory away. Finished results stay where they are.")
    if from_stage is not None:
        if from_stage not in LOOP_STAGES:
            raise LoopError(f"--from {from_stage}: not a stage; stages are {', '.join(LOOP_STAGES)}")
        for stage in LOOP_STAGES[LOOP_STAGES.index(from_stage):]:
            state["done"].pop(stage, None)
    return state


def mark_done(cfg: PBTConfig, state: dict, stage: str, info: dict | None = None) -> None:
    state["done"][stage] = info or {}
    path = cfg.run_dir / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{STATE_FILE}.tmp")
    tmp.write_text(json.dumps(state, indent=2, default=str) + "\n")
    tmp.replace(path)


def run(cfg: PBTConfig, question: str | None = None, log=print, from_stage: str | None = None) -> int:
    """The main job: serve; a demo debate (printed); grow; mine; train; serve the trained model; evaluate
    base and trained; report. Finished stages are skipped on a rerun (``<run dir>/loop_state.json``);
    ``from_stage`` restarts from a stage."""
    from pbt_ray.runtime import ray_cluster

    state = load_state(cfg, from_stage)
    todo = [s for s in LOOP_STAGES if s not in state["done"]]
    if not todo:
        log(f"[pbt] every stage of {cfg.run_dir} is done; `pbt run --from STAGE` redoes one "
            f"({', '.join(LOOP_STAGES)})")
        return 0
    skipped = [s for s in LOOP_STAGES if s in state["done"]]
    if skipped:
        log(f"[pbt] already done, skipped: {', '.join(skipped)}")
    ok = True
    with ray_cluster(cfg, log=log):
        if set(todo) & {"debate", "grow", "eval"}:
            with debater_endpoint(cfg, log=log) as url:
                ok = _serve_stages(cfg, state, url, question, log)
        if "report" in todo:
            from pbt_ray.evaluation.report import ReportError, write_report

            try:
                write_report(cfg.run_dir, log=log)
                mark_done(cfg, state, "report")
            except ReportError as exc:
                log(f"[pbt] report skipped: {exc}")
    return 0 if ok else 1


def _serve_stages(cfg: PBTConfig, state: dict, url: str, question: str | None, log) -> bool:
    from pbt_ray.dialogue.pipeline import grow_trees
    from pbt_ray.dialogue.view import render_text
    from pbt_ray.preferences.mining import mine

    ok = True
    done = state["done"]
    if "debate" not in done:
        tree = debate(cfg, url, question)
        log("\n" + render_text(tree, color=sys.stdout.isatty()))
        out = cfg.run_dir / "debate.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(to_row(tree), indent=2) + "\n")
        log(f"[pbt] debate written to {out}\n")
        ok = tree.status == "complete"
        mark_done(cfg, state, "debate")
    if "grow" not in done:
        summary = grow_trees(cfg, url, log=log)
        log(format_grow_summary(summary, cfg))
        ok = ok and summary.failed == 0
        if summary.failed == 0:
            mark_done(cfg, state, "grow", {"trees": summary.grown + summary.already_done})
    if "mine" not in done:
        # Mining reads the run's trees (this run's and earlier ones); the pairs go to <run dir>/preferences.
        stats = mine(cfg, trees=str(cfg.run_dir), out=str(cfg.run_dir / "preferences"), log=log)
        mark_done(cfg, state, "mine", {"selected": stats["selected"]})
    if "train" not in done:
        _train_stage(cfg, state, log)
    if "eval" not in done:
        _eval_stage(cfg, state, url, log)
    return ok


def _train_stage(cfg: PBTConfig, state: dict, log) -> None:
    from pbt_ray.training.data import TrainDataError
    from pbt_ray.training.launch import prepare, train

    try:
        plan = prepare(cfg, str(cfg.run_dir / "preferences"), log=log)
    except TrainDataError as exc:  # e.g. the embedded model's trees gave no trainable pairs
        log(f"[pbt] train skipped: {exc}")
        mark_done(cfg, state, "train", {"skipped": str(exc)})
        return
    metrics = train(cfg, str(cfg.run_dir / "preferences"), log=log, plan=plan)
    mark_done(cfg, state, "train", {"adapter": metrics.get("adapter"), "global_step": metrics.get("global_step")})


def _eval_stage(cfg: PBTConfig, state: dict, url: str, log) -> None:
    """The configured suites on the base model (the app's persuadee) and, if training produced one, on the
    trained model served from its own app next to the debaters."""
    from pbt_ray.evaluation.stage import EvalError, evaluate

    def run_suites(label: str, endpoint: str, model: str | None) -> None:
        # The evaluated model answers the single-model suites; in the team debate it is the weaker partner
        # (the persuadee's seat) next to the unchanged persuader.
        ecfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"model": model, "weak": model})})
        for suite in cfg.eval.suites:
            try:
                evaluate(ecfg, suite, endpoint, label=label, log=log)
            except EvalError as exc:
                log(f"[pbt] eval {suite} ({label}) skipped: {exc}")

    run_suites("base", url, None)
    adapter = cfg.run_dir / "adapter"
    if (adapter / "adapter_config.json").is_file():
        with trained_endpoint(cfg, log) as trained_url:
            run_suites("trained", trained_url, "trained")
    mark_done(cfg, state, "eval")


@contextlib.contextmanager
def trained_endpoint(cfg: PBTConfig, log=print) -> Iterator[str]:
    """The debater app updated in place with the run's trained model added (role ``trained``): the
    debaters' deployments keep running, and the same extractor scores base and trained answers."""
    from pbt_ray.serving.app import deploy, wait_ready
    from pbt_ray.serving.trained import merged_model, with_trained_model

    tcfg = with_trained_model(cfg, merged_model(cfg.run_dir, log=log))
    deploy(tcfg, log=log)
    yield wait_ready(tcfg, log=log)


def format_grow_summary(summary, cfg: PBTConfig) -> str:
    lines = [
        f"[pbt] trees: {summary.grown} grown, {summary.already_done} already done, {summary.failed} failed, "
        f"{len(summary.problems)} bad question rows; {summary.turns} turns, {summary.generated_tokens} generated "
        f"tokens in {summary.seconds:.1f} s ({summary.tokens_per_s:.0f} tok/s)",
        f"[pbt] trees in {cfg.run_dir / 'trees'}; look at one with: pbt view {cfg.run_dir}",
    ]
    lines += [f"[pbt] failed: {failure}" for failure in summary.failures[:10]]
    return "\n".join(lines)
