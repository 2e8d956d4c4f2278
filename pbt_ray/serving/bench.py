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

    from pbt_ray.serving.auth import client_key

    client = openai.AsyncOpenAI(base_url=url, api_key=client_key(), timeout=600, max_retries=0)
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


# ---- load: latency and errors per concurrency level (issue 16.4) ------------------------------------


@dataclass
class LoadLevel:
    concurrency: int
    requests: int
    ok: int
    rejected: int  # 503 from Serve's bounded queue
    rejected_with_retry_after: int
    errors: dict[str, int]  # anything else, by status or exception
    p50_s: float | None  # latency of the answered requests
    p99_s: float | None
    seconds: float

    def line(self) -> str:
        lat = (f"p50 {self.p50_s:6.2f} s  p99 {self.p99_s:6.2f} s" if self.p50_s is not None else "no answers")
        return (f"[bench] load c={self.concurrency:<4d} {self.ok}/{self.requests} answered, {self.rejected} rejected "
                f"(503, {self.rejected_with_retry_after} with Retry-After), {sum(self.errors.values())} other errors "
                f"{dict(self.errors) or ''}; {lat}")


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def measure_load(url: str, model: str, levels: list[int], max_tokens: int = 8, api_key: str | None = None,
                       log=print) -> list[LoadLevel]:
    """For each level ``c``, ``c`` requests at once (one burst, no retries) against the OpenAI endpoint: how many
    were answered, rejected with 503 (and whether with Retry-After), failed otherwise, and the p50 / p99 latency
    of the answered ones. Plain HTTP, so a rejection is seen as the status the server sent."""
    import httpx

    from pbt_ray.serving.auth import NO_KEY, client_key

    key = api_key or client_key()
    headers = {} if key == NO_KEY else {"Authorization": f"Bearer {key}"}  # as auth_headers, for this key
    limits = httpx.Limits(max_connections=max(levels) + 8, max_keepalive_connections=max(levels) + 8)
    results = []
    async with httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, limits=limits, timeout=600) as http:
        for c in levels:
            async def one(messages) -> tuple[str, float, bool]:
                start = time.perf_counter()
                try:
                    r = await http.post("/chat/completions", json={
                        "model": model, "messages": messages, "temperature": 0.0, "max_tokens": max_tokens})
                except httpx.HTTPError as exc:
                    return type(exc).__name__, time.perf_counter() - start, False
                return str(r.status_code), time.perf_counter() - start, "retry-after" in r.headers

            start = time.perf_counter()
            outcomes = await asyncio.gather(*(one(m) for m in bench_prompts(c)))
            seconds = time.perf_counter() - start
            answered = [t for status, t, _ in outcomes if status == "200"]
            errors: dict[str, int] = {}
            for status, _, _ in outcomes:
                if status not in ("200", "503"):
                    errors[status] = errors.get(status, 0) + 1
            level = LoadLevel(c, c, len(answered), sum(s == "503" for s, _, _ in outcomes),
                              sum(s == "503" and ra for s, _, ra in outcomes), errors,
                              _percentile(answered, 0.5), _percentile(answered, 0.99), seconds)
            log(level.line())
            results.append(level)
    return results


def load_report(levels: list[LoadLevel]) -> str:
    rows = ["concurrency | answered | rejected 503 (Retry-After) | other errors | p50 s | p99 s",
            "----------- | -------- | -------------------------- | ------------ | ----- | -----"]
    for lv in levels:
        p50 = f"{lv.p50_s:.2f}" if lv.p50_s is not None else "-"
        p99 = f"{lv.p99_s:.2f}" if lv.p99_s is not None else "-"
        rows.append(f"{lv.concurrency:>11d} | {lv.ok:>8d} | {lv.rejected:>15d} ({lv.rejected_with_retry_after}) | "
                    f"{sum(lv.errors.values()):>12d} | {p50:>5} | {p99:>5}")
    return "\n".join(rows)


def run_load_bench(cfg: PBTConfig, levels: list[int], max_tokens: int, url: str | None = None,
                   model_role: str = "persuader", log=print) -> dict:
    """`pbt bench serve --load`: latency and errors per concurrency level, against ``url`` or a fresh app."""
    from pbt_ray.serving.app import ingress_admission
    from pbt_ray.serving.auth import client_key

    model = model_role if url else cfg.serve.roles[model_role]
    if url:
        results = asyncio.run(measure_load(url, model, levels, max_tokens, client_key(cfg.serve), log=log))
    else:
        from pbt_ray.runtime import ray_cluster
        from pbt_ray.serving.app import deploy, wait_ready

        with ray_cluster(cfg, log=log):
            deploy(cfg, log=log)
            url = wait_ready(cfg, log=log)
            results = asyncio.run(measure_load(url, model, levels, max_tokens, client_key(cfg.serve), log=log))
    admission = ingress_admission(cfg.serve)
    log(f"\nLoad on {url} ({model}, {max_tokens} tokens per request; the ingress admits "
        f"{admission['max_ongoing_requests']} and queues {admission['max_queued_requests']} more):\n{load_report(results)}")
    return {"url": url, "model": model, "max_tokens": max_tokens, "admission": admission,
            "levels": [asdict(lv) for lv in results]}


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
