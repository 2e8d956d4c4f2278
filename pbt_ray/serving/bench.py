"""`pbt bench serve`: generated tokens/s through the Serve app vs. the same engine offline.

Both sides get identical prompts and sampling (greedy, ``ignore_eos`` so every request generates
exactly ``max_tokens``), at each concurrency level: ``c`` requests in flight at once through HTTP,
and batches of ``c`` conversations for the offline ``vllm.LLM``. Each level is warmed up once, then
measured ``rounds`` times; the median is reported. The offline engine runs in a fresh subprocess
after the Serve app is shut down, so the two never share the CPU.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

from pbt_ray.config import PBTConfig, ServedModelConfig


@dataclass
class Measurement:
    side: str
    concurrency: int
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def bench_prompts(n: int) -> list[list[dict[str, str]]]:
    subjects = ["rivers", "volcanoes", "the Moon", "honeybees", "chess", "glaciers", "the violin", "comets"]
    return [[{"role": "user", "content": f"Tell me something interesting about {subjects[i % len(subjects)]} (#{i})."}] for i in range(n)]


async def _serve_round(client, model: str, concurrency: int, max_tokens: int) -> Measurement:
    async def one(messages):
        r = await client.chat.completions.create(
            model=model, messages=messages, temperature=0.0, max_tokens=max_tokens, extra_body={"ignore_eos": True}
        )
        return r.usage.completion_tokens

    start = time.perf_counter()
    tokens = await asyncio.gather(*(one(m) for m in bench_prompts(concurrency)))
    return Measurement("serve", concurrency, sum(tokens), time.perf_counter() - start)


async def measure_serve(url: str, model: str, levels: list[int], max_tokens: int, rounds: int, log=print) -> list[Measurement]:
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="bench", timeout=600, max_retries=0)
    results = []
    try:
        for c in levels:
            await _serve_round(client, model, c, max_tokens)  # warm-up
            runs = [await _serve_round(client, model, c, max_tokens) for _ in range(rounds)]
            results.append(_median(runs))
            log(f"[bench] serve    c={c:<3d} {results[-1].tokens_per_s:8.1f} tok/s")
    finally:
        await client.close()
    return results


def measure_offline(model: ServedModelConfig, source: str, levels: list[int], max_tokens: int, rounds: int) -> list[Measurement]:
    """Run in a fresh interpreter: vLLM spawns its engine core and needs a clean ``__main__``."""
    spec = {
        "source": source,
        "dtype": model.dtype,
        "max_model_len": model.max_model_len,
        "enforce_eager": model.eager,
        "enable_prefix_caching": model.enable_prefix_caching,
        "engine_kwargs": model.engine_kwargs,
        "levels": levels,
        "max_tokens": max_tokens,
        "rounds": rounds,
    }
    env = dict(os.environ)
    if model.accelerator == "cpu":
        from pbt_ray.runtime import CPU_ENGINE_ENV

        env.update(CPU_ENGINE_ENV)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{model.cpu_kv_cache_gib:g}")
    proc = subprocess.run(
        [sys.executable, "-m", "pbt_ray.serving.bench", json.dumps(spec)],
        env=env, stdout=subprocess.PIPE, text=True, check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"offline benchmark failed (exit {proc.returncode}); see its output above")
    return [Measurement(**json.loads(line)) for line in lines]


def _offline_main(spec: dict) -> None:
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=spec["source"], dtype=spec["dtype"], max_model_len=spec["max_model_len"],
        enforce_eager=spec["enforce_eager"], enable_prefix_caching=spec["enable_prefix_caching"], **spec["engine_kwargs"],
    )
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], ignore_eos=True)
    for c in spec["levels"]:
        prompts = bench_prompts(c)
        llm.chat(prompts, params, use_tqdm=False)  # warm-up
        runs = []
        for _ in range(spec["rounds"]):
            start = time.perf_counter()
            outputs = llm.chat(prompts, params, use_tqdm=False)
            tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
            runs.append(Measurement("offline", c, tokens, time.perf_counter() - start))
        m = _median(runs)
        print(f"[bench] offline  c={c:<3d} {m.tokens_per_s:8.1f} tok/s", file=sys.stderr, flush=True)
        print(json.dumps(asdict(m)), flush=True)


def _median(runs: list[Measurement]) -> Measurement:
    return sorted(runs, key=lambda m: m.tokens_per_s)[len(runs) // 2]


def report(serve: list[Measurement], offline: list[Measurement]) -> str:
    rows = ["concurrency | serve tok/s | offline tok/s | serve/offline", "----------- | ----------- | ------------- | -------------"]
    by_c = {m.concurrency: m for m in offline}
    for s in serve:
        o = by_c.get(s.concurrency)
        ratio = f"{s.tokens_per_s / o.tokens_per_s:.2f}" if o and o.tokens_per_s else "n/a"
        rows.append(f"{s.concurrency:>11d} | {s.tokens_per_s:11.1f} | {o.tokens_per_s if o else 0:13.1f} | {ratio:>13}")
    return "\n".join(rows)


def run_serve_bench(cfg: PBTConfig, levels: list[int], max_tokens: int, rounds: int, model_role: str = "persuader", log=print) -> dict:
    """Deploy the app, measure through HTTP, shut it down, measure offline, print the side-by-side table."""
    from pbt_ray.models import resolve_model_source
    from pbt_ray.runtime import ray_cluster
    from pbt_ray.serving.app import deploy, wait_ready

    model = cfg.serve.model(cfg.serve.roles[model_role])
    source = resolve_model_source(model.source, model.dtype)
    with ray_cluster(cfg, log=log):
        deploy(cfg, log=log)
        url = wait_ready(cfg, log=log)
        serve_results = asyncio.run(measure_serve(url, model.id, levels, max_tokens, rounds, log=log))
    offline_results = measure_offline(model, source, levels, max_tokens, rounds)
    table = report(serve_results, offline_results)
    log(f"\nModel {model.id}, {max_tokens} generated tokens per request, median of {rounds} rounds:\n{table}")
    return {
        "model": model.id,
        "max_tokens": max_tokens,
        "rounds": rounds,
        "serve": [asdict(m) | {"tokens_per_s": m.tokens_per_s} for m in serve_results],
        "offline": [asdict(m) | {"tokens_per_s": m.tokens_per_s} for m in offline_results],
    }


if __name__ == "__main__":
    _offline_main(json.loads(sys.argv[1]))
