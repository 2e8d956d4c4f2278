"""Unit tests are pure logic, free of Ray: a library call that would start a Ray cluster on its own (Ray's auto-init,
e.g. ray.serve.llm's builder asking ray.get_runtime_context()) fails here instead. One did, and the in-process
cluster it left (2 CPUs, default temp dir) was then reused by the integration tests' session app, whose ingress
could never be scheduled."""

import pytest


@pytest.fixture(autouse=True)
def no_ray_auto_init(monkeypatch):
    import ray
    from ray._private import auto_init_hook

    monkeypatch.setattr(auto_init_hook, "enable_auto_connect", False)
    yield
    if ray.is_initialized():
        ray.shutdown()
        pytest.fail("this unit test left a Ray cluster running: unit tests must not start Ray")
