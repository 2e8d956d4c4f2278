"""The loop's stages, composed: what `pbt run` and the `jobs/` entrypoints call.

Today: serve the debaters, hold one demo debate, grow the trees, mine them into preference pairs.
Training and evaluation join as they are built.
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


def run(cfg: PBTConfig, question: str | None = None, log=print) -> int:
    """The main job: serve, one demo debate (printed), grow the configured trees, mine them into pairs."""
    from pbt_ray.dialogue.pipeline import grow_trees
    from pbt_ray.dialogue.view import render_text
    from pbt_ray.preferences.mining import mine
    from pbt_ray.runtime import ray_cluster

    with ray_cluster(cfg, log=log), debater_endpoint(cfg, log=log) as url:
        tree = debate(cfg, url, question)
        log("\n" + render_text(tree, color=sys.stdout.isatty()))
        out = cfg.run_dir / "debate.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(to_row(tree), indent=2) + "\n")
        log(f"[pbt] debate written to {out}\n")
        summary = grow_trees(cfg, url, log=log)
        log(format_grow_summary(summary, cfg))
        # Mining reads the run's trees (this run's and earlier ones); the pairs go to <run dir>/preferences.
        mine(cfg, trees=str(cfg.run_dir), out=str(cfg.run_dir / "preferences"), log=log)
    return 0 if tree.status == "complete" and summary.failed == 0 else 1


def format_grow_summary(summary, cfg: PBTConfig) -> str:
    lines = [
        f"[pbt] trees: {summary.grown} grown, {summary.already_done} already done, {summary.failed} failed, "
        f"{len(summary.problems)} bad question rows; {summary.turns} turns, {summary.generated_tokens} generated "
        f"tokens in {summary.seconds:.1f} s ({summary.tokens_per_s:.0f} tok/s)",
        f"[pbt] trees in {cfg.run_dir / 'trees'}; look at one with: pbt view {cfg.run_dir}",
    ]
    lines += [f"[pbt] failed: {failure}" for failure in summary.failures[:10]]
    return "\n".join(lines)
