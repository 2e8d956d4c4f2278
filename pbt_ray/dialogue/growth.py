"""The growth engine: every open turn of every tree of a batch in flight at once.

The reference grows one tree at a time, depth-first, one ``generate`` call at a time (PBT_SPEC.md
§7.4). Here each open turn is an asyncio task: it generates, extracts its answer, and, unless the two
agents now agree or the branch is at full depth, starts its children, which run concurrently with
every other open turn of every tree; children even start while their parent's answer is still being
extracted (``grow.speculative``), and are dropped if that answer ends the branch. One semaphore bounds
the requests in flight, so the serving replicas' continuous batching always has work. Breadth-first order is a property of the result: node
ids are assigned at the end by (depth, position), so a tree is identical however the requests
interleaved, and each request's seed depends only on the tree and the node's position.

A request that keeps failing fails its tree (with the reason, keeping nothing half-done in the batch);
the other trees carry on. Dialogue code sees only a chat client (``ChatClient`` or a scripted one).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Protocol

from pbt_ray.config import GrowConfig
from pbt_ray.dialogue.extraction import Extractor
from pbt_ray.dialogue.rules import clean, families_at, messages_for, request_seed, role_at, sampling, speaker_at
from pbt_ray.dialogue.tree import Node, Tree, resolve_answer
from pbt_ray.questions import Question
from pbt_ray.serving.client import ChatResult, EndpointError
from pbt_ray.serving.retry import RetryPolicy




class ChatBackend(Protocol):
    async def chat(self, model: str, messages: list[dict[str, str]], *, temperature: float, max_tokens: int,
                   seed: int | None = None, extra: dict | None = None) -> ChatResult: ...


class TreeFailed(RuntimeError):
    pass


@dataclass
class _TreeState:
    question: Question
    tree: Tree
    nodes: dict[tuple[int, ...], Node] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)


class GrowthEngine:
    """Grows trees against a chat backend. ``models`` maps "A", "B" and "extractor" to request model ids;
    ``extract_mode`` is ``extract.mode`` of the config (how answers are read, dialogue/extraction.py)."""

    def __init__(self, backend: ChatBackend, cfg: GrowConfig, models: dict[str, str], extract_mode: str = "auto",
                 retry_window_s: float = 180.0, retry: RetryPolicy | None = None):
        missing = {"A", "B", "extractor"} - set(models)
        if missing:
            raise ValueError(f"models must name {sorted(missing)}")
        self.backend, self.cfg, self.models = backend, cfg, dict(models)
        # serve.retry_window_s: requests wait through a replica restart (pbt_ray/serving/retry.py)
        self.retry = retry or RetryPolicy(window_s=retry_window_s, max_retries=cfg.retries)
        self.extractor = Extractor(backend, "extractor", extract_mode, cfg.extractor_max_tokens)
        self._in_flight: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def grow(self, questions: list[Question]) -> list[Tree]:
        """Grow one tree per question. Concurrent calls on one loop share the in-flight bound."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # asyncio primitives belong to the loop they were first used on
            self._in_flight, self._loop = asyncio.Semaphore(self.cfg.max_in_flight), loop
        states = [self._new_state(q) for q in questions]
        await asyncio.gather(*(self._grow_tree(s) for s in states))
        return [s.tree for s in states]

    # ---- one tree ----------------------------------------------------------------------------

    def _new_state(self, q: Question) -> _TreeState:
        models = dict(self.models)
        if self.extractor.mode == "rules":  # no extractor model answers: the record says who read the answers
            models["extractor"] = "deterministic reader"
        tree = Tree(
            tree_id=q.id, question_id=q.id, question=q.question, gold=list(q.answers), choices=q.choices,
            source=q.source, mode=self.cfg.mode, models=models,
            roles={"persuader": self.cfg.persuader, "persuadee": "B" if self.cfg.persuader == "A" else "A"},
            seed=request_seed(self.cfg.seed, q.id, ()),
        )
        return _TreeState(question=q, tree=tree)

    async def _grow_tree(self, state: _TreeState) -> None:
        try:
            await self._expand(state, [], 0, (), None)
        except BaseExceptionGroup as group:  # the TaskGroups of a tree cancel its siblings on the first failure
            failure = _first_leaf(group)
            if not isinstance(failure, Exception):
                raise
            state.tree.status = "failed"
            state.tree.error = str(failure) if isinstance(failure, TreeFailed) else f"internal error: {failure!r}"
        finally:
            state.tree.nodes = _number_breadth_first(state.nodes)
            state.tree.seconds = round(time.monotonic() - state.started, 3)

    async def _expand(self, state: _TreeState, path: list[Node], depth: int, key: tuple[int, ...],
                      parent_known: asyncio.Future | None = None) -> None:
        families = families_at(depth, self.cfg, state.tree.seed)
        async with asyncio.TaskGroup() as group:
            for index, family in enumerate(families):
                group.create_task(self._turn(state, path, depth, key + (index,), family, parent_known))

    async def _turn(self, state: _TreeState, path: list[Node], depth: int, key: tuple[int, ...], family: str,
                    parent_known: asyncio.Future | None) -> None:
        """Generate a turn, extract its answer, and grow its children.

        The children's prompts need only this turn's text, so they start generating while this turn's
        answer is being extracted (speculatively: they are cancelled, and never recorded, if the answer shows
        the two agents now agree). That halves the chain of dependent requests per branch.
        """
        q, tree = state.question, state.tree
        speaker = speaker_at(depth)
        messages = messages_for(family, q.question, path, speaker, self.cfg, q.choices)
        params = sampling(self.cfg)
        seeded = self.cfg.seed_requests and params["temperature"] > 0  # a seed means nothing when greedy
        seed = request_seed(self.cfg.seed, tree.tree_id, key) if seeded else None
        reply = await self._request(state, speaker, messages, seed=seed, **params)
        node = Node(id=-1, parent=-1, depth=depth, speaker=speaker, role=role_at(depth, self.cfg), family=family,
                    text=clean(reply.text), finish_reason=reply.finish_reason, completion_tokens=reply.completion_tokens)
        known = asyncio.get_running_loop().create_future()  # set once this node's answer is resolved
        children = None
        if self.cfg.speculative and depth + 1 < self.cfg.depth:
            children = asyncio.create_task(self._expand(state, [*path, node], depth + 1, key, known))
        try:
            # the reader needs no request where the turn is unambiguous; an empty turn is NONE
            reading = await self.extractor.read(
                q.question, node.text, q.choices,
                request=lambda _model, messages, **params: self._request(state, "extractor", messages, **params))
            node.raw_answer, node.outcome, node.read_by = reading.answer, reading.outcome, reading.method
            if parent_known is not None:
                await parent_known  # resolving needs the answers along the path
            resolve_answer(node, path, q.answers, q.choices)
        except BaseException:
            if children is not None:
                children.cancel()
            raise
        state.nodes[key] = node
        known.set_result(node.agree)
        if children is None and not node.agree and depth + 1 < self.cfg.depth:  # not speculative: start them now
            children = asyncio.create_task(self._expand(state, [*path, node], depth + 1, key, known))
        if children is not None:
            if node.agree:  # the branch stops here: drop the speculative children
                children.cancel()
            try:
                await children
            except asyncio.CancelledError:
                if not node.agree or asyncio.current_task().cancelling():
                    raise  # not our own cancellation of the speculative children: pass it on

    async def _request(self, state: _TreeState, who: str, messages, **params) -> ChatResult:
        model = self.models[who]

        async def once() -> ChatResult:
            async with self._in_flight:  # a request waiting out its backoff holds no in-flight slot
                return await self.backend.chat(model, messages, **params)

        try:
            result = await self.retry.call(once)
        except EndpointError as exc:
            raise TreeFailed(f"request to '{model}' failed: {exc}") from exc
        state.tree.requests += 1
        state.tree.generated_tokens += result.completion_tokens
        if who in state.tree.models and result.model:
            state.tree.models[who] = result.model  # record what actually answered
        return result


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _number_breadth_first(nodes: dict[tuple[int, ...], Node]) -> list[Node]:
    """Ids by (depth, position among the tree's turns); parents follow. Deterministic for any schedule."""
    ordered = sorted(nodes.items(), key=lambda item: (len(item[0]), item[0]))
    ids = {key: index for index, (key, _) in enumerate(ordered)}
    out = []
    for key, node in ordered:
        node.id = ids[key]
        node.parent = ids.get(key[:-1], -1)
        out.append(node)
    return out
