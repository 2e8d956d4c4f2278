"""`ray job submit` as a cluster user runs it: a real Ray head (`ray start --head`) on loopback with its own
temp dir and ports, the smallest loop preset submitted through the Jobs API, its outputs checked. The head
is stopped through its own process group, never with `ray stop` (which kills every Ray on the machine)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from pbt_ray.runtime import LOCAL_CLUSTER_ENV, WORKER_ENV
from pbt_ray.serving.trained import MERGED_MARKER

from .conftest import ROOT, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def ray_head():
    """A head node in its own process group: (dashboard URL, environment for the `ray` CLI)."""
    temp_dir = tempfile.mkdtemp(prefix="pbt-head-", dir="/tmp")  # short: Unix socket paths are limited
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, **LOCAL_CLUSTER_ENV, **WORKER_ENV, "PATH": venv_bin + os.pathsep + os.environ["PATH"]}
    env.pop("RAY_ADDRESS", None)
    dashboard = free_port()
    command = [os.path.join(venv_bin, "ray"), "start", "--head", "--block", f"--temp-dir={temp_dir}",
               f"--port={free_port()}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
               "--include-dashboard=true", "--disable-usage-stats",
               "--num-cpus=7",  # the local preset's peak: the app, the trained model and two Train workers
               # Every fixed default port taken explicitly, so this head never collides with another Ray here.
               *(f"--{name}={free_port()}" for name in (
                   "ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                   "metrics-export-port", "runtime-env-agent-port", "node-manager-port", "object-manager-port"))]
    head = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + 180
        probe = None
        while probe is None:  # the Jobs API answers before its agent can take jobs ("No available agent")
            assert head.poll() is None, "ray start --head exited"
            try:
                probe = JobSubmissionClient(url).submit_job(entrypoint="python -c 'print(1)'")
            except Exception:  # noqa: BLE001 - not up yet
                assert time.monotonic() < deadline, "the head's Jobs API did not take a job within 180 s"
                time.sleep(1)
        while not JobSubmissionClient(url).get_job_status(probe).is_terminal():
            assert time.monotonic() < deadline, "the probe job did not finish"
            time.sleep(0.5)
        yield url, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops its own processes on SIGTERM
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(30)
        subprocess.run(["pkill", "-9", "-f", temp_dir], check=False)  # anything of this head left behind


def seeded_tree(fixture: str, question_id: str):
    """A tree of PBT_SPEC.md §8's shape for one of the smoke preset's questions (F1 gives a resist pair, F2 an
    accept pair), written where `pbt grow` would have written it: the grow stage counts it as done."""
    from tests.unit.pbt_fixtures import FIXTURES, build_tree

    a0, b1, a2, b3r, b3a = FIXTURES[fixture]
    return build_tree(lambda d, family, _parent: {0: a0, 1: b1, 2: a2}.get(d) or (b3r if family == "rp" else b3a),
                      tree_id=question_id, question_id=question_id)


def submit(url, env, *args, wait: bool = True) -> str:
    """`ray job submit` of the smoke loop; returns the submission id (``wait``: after checking that it succeeded)."""
    job_id = f"pbt-smoke-{uuid.uuid4().hex[:8]}"
    command = [os.path.join(str(Path(sys.executable).parent), "ray"), "job", "submit", "--address", url,
               "--submission-id", job_id, "--runtime-env", "jobs/runtime_env.yaml", *([] if wait else ["--no-wait"]),
               "--", "python", "jobs/run_loop.py", "-c", "smoke", *args]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    if wait:
        from ray.job_submission import JobStatus, JobSubmissionClient

        client = JobSubmissionClient(url)
        status, logs = client.get_job_status(job_id), client.get_job_logs(job_id)
        assert status == JobStatus.SUCCEEDED, f"{status}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}\n{logs[-4000:]}"
    else:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return job_id


def kill_driver_when(url, job_id, happened, timeout_s: float = 1200) -> str:
    """SIGKILL the job's driver (the `pbt run` process; the cluster, its Serve app and the job server live on) the
    moment ``happened()`` turns true (watched on the shared file system every 20 ms, closer than the job's log
    can follow); the job's log up to the kill."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(url)
    deadline = time.monotonic() + timeout_s
    pid = None
    while not happened():
        if pid is None:
            info = client.get_job_info(job_id)
            assert not info.status.is_terminal(), f"{info.status} before the fault:\n{client.get_job_logs(job_id)[-4000:]}"
            pid = int(info.driver_info.pid) if info.driver_info else None
        assert time.monotonic() < deadline, f"not reached within {timeout_s} s:\n{client.get_job_logs(job_id)[-4000:]}"
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    while not client.get_job_status(job_id).is_terminal():
        time.sleep(0.5)
    return client.get_job_logs(job_id)


def test_the_loop_through_ray_job_submit_survives_its_driver_killed_during_the_merge_and_the_evaluation(
        ray_head, tmp_path):
    """The smoke preset as a cluster user submits it, its driver SIGKILLed twice (issue 16.3): during the merge of
    the trained adapter, then, in the next submission, during the trained model's evaluation; the third submission
    finishes without retraining and leaves a consistent run, and a fourth finds everything done.

    All but two of its trees are planted (fixture trees with a known resist or accept pair, so training never
    depends on sampling here; tests/integration/test_main_job.py grows all of them for real); the job grows the
    other two against its Serve app."""
    from pbt_ray.config import load_config
    from tests.unit.pbt_fixtures import write_ours

    from .test_main_job import check_trained_run, stages

    url, env = ray_head
    runs = tmp_path / "runs"
    run = runs / "smoke"
    chosen = load_config("smoke").grow.question_ids
    (run / "trees").mkdir(parents=True)
    write_ours(run / "trees" / "part-planted.parquet",
               [seeded_tree("F1" if i % 2 else "F2", q) for i, q in enumerate(chosen[2:])])
    args = [f"runs_dir={runs}", f"serve.port={free_port()}", "train.max_steps=2"]

    # 1. Killed during the merge (after training and the base model's evaluations).
    logs = kill_driver_when(url, submit(url, env, *args, wait=False), (run / ".merged.tmp").exists)
    assert "starting an in-process Ray cluster" not in logs  # the job joined the head
    assert f"[pbt] trees: 2 grown, {len(chosen) - 2} already done, 0 failed" in logs and "pairs by type:" in logs
    assert json.loads((run / "preferences" / "mine_stats.json").read_text())["trees"] == len(chosen)
    trained = stages(run)
    assert all(trained[s]["complete"] for s in ("debate", "grow", "mine", "train")), trained
    assert trained["train"]["info"]["global_step"] == 2 and not trained.get("eval", {}).get("complete")
    assert not (run / "merged" / MERGED_MARKER).is_file()  # killed mid-merge
    adapter = run / "adapter" / "adapter_model.safetensors"
    stamp = adapter.stat().st_mtime_ns

    # 2. The next submission: no training, the base evaluations kept, the running app reused, the merge redone;
    # killed during the trained model's evaluation, after its first suite.
    first_suite = run / "eval" / "trained" / "are-you-sure" / "metrics.json"
    logs = kill_driver_when(url, submit(url, env, *args, wait=False), first_suite.exists)
    assert "[pbt] training " not in logs and "Ray Train run" not in logs
    assert all(f"[pbt] eval {s} (base): kept from the interrupted attempt" in logs for s in ("are-you-sure", "team"))
    assert "[pbt] merging the trained adapter" in logs and (run / "merged" / MERGED_MARKER).is_file()
    assert not (run / "eval" / "trained" / "team").exists()  # killed before the trained model's second suite

    # 3. The submission that finishes: still no training and no second merge; the finished trained suite kept.
    from ray.job_submission import JobSubmissionClient

    logs = JobSubmissionClient(url).get_job_logs(submit(url, env, *args))
    assert "[pbt] training " not in logs and "Ray Train run" not in logs and "merging" not in logs
    assert "[pbt] eval are-you-sure (trained): kept from the interrupted attempt" in logs
    assert stages(run)["train"] == trained["train"] and adapter.stat().st_mtime_ns == stamp  # trained once
    check_trained_run(run)

    # 4. A fourth submission skips every finished stage.
    logs = JobSubmissionClient(url).get_job_logs(submit(url, env, *args))
    assert "every stage of" in logs and "deploying Serve app" not in logs
