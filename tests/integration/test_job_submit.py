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
               "--include-dashboard=true", "--num-cpus=4", "--disable-usage-stats",
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


def test_smoke_loop_through_ray_job_submit(ray_head, tmp_path):
    url, env = ray_head
    runs = tmp_path / "runs"
    job_id = f"pbt-smoke-{uuid.uuid4().hex[:8]}"
    submit = [os.path.join(str(Path(sys.executable).parent), "ray"), "job", "submit", "--address", url,
              "--submission-id", job_id, "--runtime-env", "jobs/runtime_env.yaml", "--",
              "python", "jobs/run_loop.py", "-c", "smoke", f"runs_dir={runs}", f"serve.port={free_port()}"]
    proc = subprocess.run(submit, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(url)
    status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, f"{status}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}\n{logs[-4000:]}"
    # The job joined the head (no in-process cluster of its own) and ran the loop's stages there.
    assert "starting an in-process Ray cluster" not in logs
    assert "[pbt] trees: 1 grown" in logs and "pairs by type:" in logs
    run = runs / "smoke"
    debate = json.loads((run / "debate.json").read_text())
    assert len(debate["nodes"]) >= 1 and debate["mode"] == "eval"
    assert len(list((run / "trees").glob("part-*.parquet"))) == 1
    stats = json.loads((run / "preferences" / "mine_stats.json").read_text())
    assert stats["trees"] == 1
