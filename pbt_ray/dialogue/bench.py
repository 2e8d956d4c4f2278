"""`pbt bench grow`: tree growth against its ceiling and against reference-style growth, side by side.

On one Serve app and one question set:

(a) ours: the growth engine, every open turn of every tree in flight (bounded by grow.max_in_flight);
    every request it sends is recorded;
(b) ceiling: the same requests replayed as one flat batch with no dependencies between them, each forced
    to generate exactly the tokens it generated in (a) (``ignore_eos``), under the same in-flight bound;
(c) reference-style: the same engine with one request in flight, one tree after another (PBT_SPEC.md
    §7.4), and no KV cache carried from one request to the next: the reference calls HF ``generate``
    with the cache off, so every call computes its whole prompt again. Each request gets its own
    ``cache_salt`` (a vLLM request field that keys the prefix cache), which keeps vLLM's prefix cache from
    serving one request's prompt to the next. Inside a request vLLM still caches (the reference does not:
    it is slower still). Sequential growth is slow, so (c) runs on the first ``reference_questions``
    questions; its rates (trees/s, turns/s, tokens/s) do not depend on how many trees it grows.
(c+) the same with vLLM's prefix cache on: sequential growth with today's engine, a stronger baseline
    than the reference itself, reported next to (c).
(r) the reference's own engine, for scale: a sample of (c)'s requests through HF transformers ``generate``
    with ``use_cache=False``, greedy, one at a time, each generating the tokens it generated in (c). Not
    through Serve (the reference has no server), so it is reported beside the ratios, not in them.

Then the Ray Data pipeline (`pbt grow`) on the same questions with 1 and with 2 growers.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from pbt_ray.config import PBTConfig
from pbt_ray.questions import Question, load_questions
from pbt_ray.dialogue.pipeline import make_client, transport_for
from pbt_ray.dialogue.growth import ChatBackend
from pbt_ray.serving.client import ChatResult


@dataclass
class Rate:
    name: str
    trees: int
    turns: int
    tokens: int
    seconds: float
    prompt_tokens: int | None = None  # prefilled tokens (cached prefixes included), where known

    def per_s(self, value: int) -> float:
        return value / self.seconds if self.seconds else 0.0

    def row(self) -> str:
        prompt = f"{self.per_s(self.prompt_tokens):>10.0f}" if self.prompt_tokens is not None else f"{'-':>10}"
        return (f"{self.name:<38} {self.trees:>5} {self.per_s(self.trees):>8.3f} {self.per_s(self.turns):>8.2f} "
                f"{self.per_s(self.tokens):>9.1f} {prompt} {self.seconds:>8.1f}")


class RecordingClient:
    """Passes requests through and remembers (model, messages, completion tokens) of each."""

    def __init__(self, client: ChatBackend):
        self.client, self.requests = client, []

    async def chat(self, model, messages, *, temperature, max_tokens, seed=None, extra=None) -> ChatResult:
        result = await self.client.chat(model, messages, temperature=temperature, max_tokens=max_tokens, seed=seed, extra=extra)
        self.requests.append((model, messages, temperature, seed, extra, result.prompt_tokens, result.completion_tokens))
        return result


class UncachedClient:
    """Gives every request its own ``cache_salt``, so no request reuses another's cached prefix."""

    def __init__(self, client: ChatBackend):
        self.client = client

    async def chat(self, model, messages, *, temperature, max_tokens, seed=None, extra=None) -> ChatResult:
        return await self.client.chat(model, messages, temperature=temperature, max_tokens=max_tokens, seed=seed,
                                      extra={**(extra or {}), "cache_salt": uuid.uuid4().hex})


async def _grow(url: str, cfg: PBTConfig, questions: list[Question], in_flight: int, sequential: bool, record: bool,
                uncached: bool = False):
    from pbt_ray.dialogue.growth import GrowthEngine
    from pbt_ray.dialogue.pipeline import request_models

    grow_cfg = cfg.grow.model_copy(update={"max_in_flight": in_flight})
    client = make_client(transport_for(cfg, url), cfg.serve.request_timeout_s)  # what `pbt grow` uses
    backend = UncachedClient(client) if uncached else client
    backend = RecordingClient(backend) if record else backend
    engine = GrowthEngine(backend, grow_cfg, request_models(cfg), cfg.extract.mode)
    start = time.perf_counter()
    try:
        trees = [t for q in questions for t in await engine.grow([q])] if sequential else await engine.grow(questions)
    finally:
        await client.close()
    seconds = time.perf_counter() - start
    failed = [f"{t.tree_id}: {t.error}" for t in trees if t.status != "complete"]
    if failed:
        raise RuntimeError(f"{len(failed)} trees failed during the benchmark, e.g. " + "; ".join(failed[:3]))
    return trees, seconds, (backend.requests if record else [])


async def _flat(url: str, cfg: PBTConfig, requests: list, in_flight: int) -> tuple[int, float]:
    client = make_client(transport_for(cfg, url), cfg.serve.request_timeout_s)
    gate = asyncio.Semaphore(in_flight)

    async def one(model, messages, temperature, seed, extra, _prompt_tokens, tokens):
        # The same request, minus its stop strings and output grammar, forced to generate exactly the tokens it
        # generated in (a).
        options = {k: v for k, v in (extra or {}).items() if k not in ("stop", "structured_outputs")}
        async with gate:
            r = await client.chat(model, messages, temperature=temperature, max_tokens=max(tokens, 1), seed=seed,
                                  extra=options | {"ignore_eos": True, "min_tokens": max(tokens, 1)})
            return r.completion_tokens

    start = time.perf_counter()
    try:
        produced = await asyncio.gather(*(one(*r) for r in requests))
    finally:
        await client.close()
    return sum(produced), time.perf_counter() - start


def _reference_engine(cfg: PBTConfig, requests: list, n: int) -> Rate:
    """(r): ``n`` of ``requests`` spread over the list (turns and extractions of every depth), replayed through
    transformers ``generate`` without KV cache, as the reference calls it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pbt_ray.training.data import resolve_model_path

    spec = {m.id: m for m in cfg.serve.models}[cfg.serve.roles["persuadee"]]
    path = resolve_model_path(spec.source)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    sample = requests[:: max(1, len(requests) // n)][:n]
    tokens = prompt = 0
    start = time.perf_counter()
    for _model, messages, _temperature, _seed, _extra, _prompt_tokens, generated in sample:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True,
                                            return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, use_cache=False,
                                 max_new_tokens=max(generated, 1), min_new_tokens=max(generated, 1),
                                 pad_token_id=tokenizer.eos_token_id)
        tokens += out.shape[1] - ids.shape[1]
        prompt += ids.shape[1]
    return Rate(f"(r) HF generate, no KV cache ({len(sample)} req)", 0, len(sample), tokens,
                time.perf_counter() - start, prompt)


def run_grow_bench(cfg: PBTConfig, questions_n: int, reference_questions: int, pipelines: bool = True,
                   reference_engine_requests: int = 6, log=print) -> dict:
    from pbt_ray.dialogue.pipeline import grow_trees
    from pbt_ray.loop import debater_endpoint
    from pbt_ray.runtime import ray_cluster

    questions = load_questions(cfg.grow.questions, questions_n, "skip").questions
    in_flight = cfg.grow.max_in_flight
    with ray_cluster(cfg, log=log), debater_endpoint(cfg, log=log) as url:
        asyncio.run(_grow(url, cfg, questions[:1], in_flight, False, False))  # warm the engine and prefix cache paths
        log(f"[bench] (a) growing {len(questions)} trees, up to {in_flight} requests in flight ...")
        trees, seconds, requests = asyncio.run(_grow(url, cfg, questions, in_flight, False, True))
        turns = sum(len(t.nodes) for t in trees)
        tokens = sum(r[-1] for r in requests)
        ours = Rate("(a) ours: concurrent tree growth", len(trees), turns, tokens, seconds, sum(r[-2] for r in requests))
        log(ours.row())
        log(f"[bench] (b) replaying its {len(requests)} requests as one flat batch ...")
        flat_tokens, flat_s = asyncio.run(_flat(url, cfg, requests, in_flight))
        flat = Rate("(b) ceiling: flat batch, same budget", len(trees), turns, flat_tokens, flat_s, ours.prompt_tokens)
        log(flat.row())
        subset = questions[:reference_questions]
        sequential, sequential_requests = [], []
        for name, uncached in (("(c) reference-style: 1 in flight, no KV reuse", True),
                               ("(c+) 1 in flight, prefix cache on", False)):
            log(f"[bench] {name.split(':')[0]} on {len(subset)} trees, one request in flight ...")
            ref_trees, ref_s, ref_requests = asyncio.run(_grow(url, cfg, subset, 1, True, True, uncached=uncached))
            sequential.append(Rate(name, len(ref_trees), sum(len(t.nodes) for t in ref_trees),
                                   sum(r[-1] for r in ref_requests), ref_s, sum(r[-2] for r in ref_requests)))
            sequential_requests.append(ref_requests)
            log(sequential[-1].row())
        ref, cached_ref = sequential
        engine_rows = []
        if reference_engine_requests:
            log(f"[bench] (r) {reference_engine_requests} of (c)'s requests through HF generate without KV cache ...")
            engine_rows.append(_reference_engine(cfg, sequential_requests[0], reference_engine_requests))
            log(engine_rows[-1].row())
        pools = []
        for growers in ((1, 2) if pipelines else ()):
            with tempfile.TemporaryDirectory(prefix="pbt-bench-grow-") as tmp:
                run_cfg = cfg.model_copy(update={
                    "runs_dir": tmp, "name": f"growers-{growers}",
                    "grow": cfg.grow.model_copy(update={"limit": questions_n, "min_growers": growers, "max_growers": growers,
                                                        "batch_size": max(1, -(-questions_n // growers))}),
                })
                log(f"[bench] pbt grow pipeline with {growers} grower(s) ...")
                s = grow_trees(run_cfg, url, log=lambda _m: None, progress=False)
                pools.append(Rate(f"pbt grow (Ray Data), {growers} grower(s)", s.grown, s.turns, s.generated_tokens, s.seconds))
                log(pools[-1].row())
    rates = [ours, flat, ref, cached_ref, *engine_rows, *pools]
    header = f"{'':<38} {'trees':>5} {'trees/s':>8} {'turns/s':>8} {'tokens/s':>9} {'prompt/s':>10} {'seconds':>8}"
    a_b = ours.per_s(ours.tokens) / flat.per_s(flat.tokens) if flat.seconds else 0.0
    a_c = ours.per_s(ours.tokens) / ref.per_s(ref.tokens) if ref.seconds else 0.0
    a_cplus = ours.per_s(ours.tokens) / cached_ref.per_s(cached_ref.tokens) if cached_ref.seconds else 0.0
    two_one = pools[1].per_s(pools[1].tokens) / pools[0].per_s(pools[0].tokens) if pools and pools[0].seconds else 0.0
    log("\n".join([
        "", f"Model {cfg.serve.roles['persuader']}; grow depth {cfg.grow.depth}, T={cfg.grow.temperature}, "
        f"max_tokens {cfg.grow.max_tokens}; tokens = generated tokens of turns and extractions", header,
        *[r.row() for r in rates], "",
        f"a/b (tokens/s, ours vs ceiling)        = {a_b:.2f}   (target >= 0.85)",
        f"a/c (tokens/s, ours vs reference-style) = {a_c:.1f}   (target >= 10)",
        f"a/c+ (ours vs 1 in flight, prefix cache) = {a_cplus:.1f}",
        f"b/c (the most a/c could be here)        = {flat.per_s(flat.tokens) / ref.per_s(ref.tokens) if ref.seconds else 0.0:.1f}",
        *([f"a/r (ours vs the reference's engine)    = {ours.per_s(ours.tokens) / engine_rows[0].per_s(engine_rows[0].tokens):.0f}"]
          if engine_rows and engine_rows[0].tokens else []),
        *([f"2 growers / 1 grower (tokens/s)         = {two_one:.2f}"] if pools else []),
    ]))
    return {"rates": [asdict(r) for r in rates], "a_over_b": a_b, "a_over_c": a_c, "a_over_c_plus": a_cplus,
            "a_over_r": (ours.per_s(ours.tokens) / engine_rows[0].per_s(engine_rows[0].tokens)
                         if engine_rows and engine_rows[0].tokens else None),
            "two_over_one_growers": two_one,
            "questions": questions_n, "reference_questions": len(subset), "max_in_flight": in_flight}


def write_result(result: dict, path: str | Path) -> None:
    import json

    Path(path).write_text(json.dumps(result, indent=2) + "\n")
