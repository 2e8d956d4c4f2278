"""The real debater app: vLLM on the CPU with the embedded SmolLM2 behind Ray Serve's OpenAI ingress."""

import asyncio

import httpx
import openai
import pytest

from pbt_ray.config import load_config
from pbt_ray.models import ModelError
from pbt_ray.serving.app import ServeError, check_port_free, deploy
from pbt_ray.serving.client import ChatClient, EndpointError

pytestmark = pytest.mark.integration


def test_models_and_roles_are_listed(debater_app):
    cfg, url = debater_app
    listed = {m["id"]: m for m in httpx.get(f"{url}/models", timeout=30).json()["data"]}
    assert set(listed) == {"smollm2-135m-instruct", "persuader", "persuadee", "extractor"}
    assert listed["extractor"]["metadata"]["alias_of"] == "smollm2-135m-instruct"


def test_answers_a_simple_fact_through_the_openai_client(debater_app):
    _, url = debater_app
    client = openai.OpenAI(base_url=url, api_key="none", timeout=120)
    for model in ("smollm2-135m-instruct", "persuadee"):
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "What is the capital of France?"}],
            temperature=0, max_tokens=32,
        )
        assert "Paris" in reply.choices[0].message.content
        assert reply.model == "smollm2-135m-instruct"  # the alias was served by the one engine


def test_sixteen_concurrent_requests(debater_app):
    _, url = debater_app
    client = ChatClient(url, timeout_s=300, max_retries=0)
    questions = [f"Name a colour that starts with the letter {c}." for c in "ABCDEFGHIJKLMNOP"]

    async def ask_all():
        try:
            roles = ["persuader", "persuadee", "extractor", "smollm2-135m-instruct"]
            return await asyncio.gather(*(
                client.chat(roles[i % 4], [{"role": "user", "content": q}], temperature=0.7, max_tokens=24, seed=i)
                for i, q in enumerate(questions)
            ))
        finally:
            await client.close()

    results = asyncio.run(ask_all())
    assert len(results) == 16
    assert all(r.text.strip() and r.completion_tokens > 0 for r in results)


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "JSON decode error"),
        ({"model": "persuader"}, 400, "messages"),
        ({"model": "persuader", "messages": [{"role": "user", "content": "hi"}], "temperature": -3}, 400, "temperature"),
        ({"model": "persuader", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "lots"}, 400, "max_tokens"),
        ({"model": "persuader", "messages": [{"role": "user", "content": "word " * 3000}], "max_tokens": 8}, 400,
         "maximum context length is 2048"),
        ({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}, 404, "no-such-model"),
    ],
)
def test_malformed_requests_get_4xx_and_the_app_stays_up(debater_app, body, status, fragment):
    _, url = debater_app
    if isinstance(body, bytes):
        response = httpx.post(f"{url}/chat/completions", content=body, headers={"content-type": "application/json"}, timeout=60)
    else:
        response = httpx.post(f"{url}/chat/completions", json=body, timeout=60)
    assert response.status_code == status, response.text
    assert fragment in response.text
    ok = httpx.post(f"{url}/chat/completions", timeout=120, json={
        "model": "persuadee", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"]


def test_client_reports_rejections_with_the_reason(debater_app):
    from pbt_ray.serving.client import EndpointError

    _, url = debater_app
    client = ChatClient(url, max_retries=0)

    async def too_long():
        try:
            await client.chat("persuader", [{"role": "user", "content": "word " * 3000}], max_tokens=8)
        finally:
            await client.close()

    with pytest.raises(EndpointError, match=r"rejected a request to 'persuader' \(HTTP 400\): .*maximum context length"):
        asyncio.run(too_long())


def test_busy_port_and_missing_model_fail_clearly(debater_app):
    cfg, _ = debater_app
    with pytest.raises(ServeError, match="already in use"):
        check_port_free(cfg.serve.host, cfg.serve.port)
    broken = load_config("local", ["serve.models.0.source=/nonexistent/model", "serve.app_name=broken",
                                     "train.served_as=smollm2-135m-instruct"])
    with pytest.raises(ModelError, match="'/nonexistent/model' does not exist"):
        deploy(broken)  # rejected before anything is deployed


def test_debate_against_the_running_app(debater_app, capsys):
    from pbt_ray.cli import main

    cfg, url = debater_app
    assert main(["debate", "--url", url, "--question", "What is the largest ocean on Earth?", "debate.turns=2"]) == 0
    out = capsys.readouterr().out
    assert "Question: What is the largest ocean on Earth?" in out
    # Agreement needs both speakers' answers, so turn 0 can never end the debate: both turns are there.
    assert out.index("[0] A (independent, standard)") < out.index("[1] B (independent, standard)")
    assert "Status:   complete" in out


def test_readiness_wait_times_out_with_a_clear_message(debater_app):
    from pbt_ray.serving.app import wait_ready

    cfg, _ = debater_app
    never = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"app_name": "never-deployed"})})
    with pytest.raises(ServeError, match=r"not ready within 2 s. Last status:\nnot deployed yet\n.*serve.ready_timeout_s"):
        wait_ready(never, timeout_s=2, log=lambda _: None)


def test_a_config_with_another_serve_port_is_refused_at_once(debater_app):
    """Serve has one HTTP port per cluster: a rerun with another serve.port used to wait out
    serve.ready_timeout_s (15 minutes) on a port nothing listens on."""
    from pbt_ray.serving.app import check_serve_port

    cfg, _ = debater_app
    check_serve_port(cfg)  # the port Serve runs on: fine
    other = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"port": cfg.serve.port + 1})})
    with pytest.raises(ServeError, match=f"HTTP port {cfg.serve.port}, not serve.port={cfg.serve.port + 1}; "
                                         f"set serve.port={cfg.serve.port}"):
        check_serve_port(other)


def test_two_runs_share_one_cluster_side_by_side(debater_app, tmp_path):
    """Issue 14 (7): every run deployed `pbt-debaters` on `/`, so a second run on the cluster replaced the first's
    models mid-run. Now run `side` deploys `pbt-side` on `/side` next to the session's run (`pbt-local` on
    `/local`), and both answer, each from its own engine.

    Issue 16 (5), on the same second app (one engine start for both): `side` requires a bearer token, read by its
    ingress replica from a mounted-secret file; requests without it or with a wrong one get 401, pbt's own
    clients (the readiness wait, ChatClient) send it, Serve's health probe still answers, and the session's app
    (no token) is unaffected."""
    import asyncio

    from ray import serve

    from pbt_ray.serving.app import wait_ready
    from pbt_ray.serving.auth import client_key

    cfg, url = debater_app
    secret = tmp_path / "pbt-api-key"
    secret.write_text("side-s3cret\n")
    side = load_config("local", ["name=side", f"serve.port={cfg.serve.port}", "serve.models.0.cpu_kv_cache_gib=1",
                                 f"serve.api_key_file={secret}", "serve.require_api_key=true"])
    assert (side.serve.app_name, side.serve.route_prefix) == ("pbt-side", "/side") != (cfg.serve.app_name, cfg.serve.route_prefix)
    deploy(side, log=lambda *_: None)
    try:
        side_url = wait_ready(side, log=lambda *_: None)  # its /models call sends the token
        assert side_url.endswith("/side/v1") and url.endswith("/local/v1")
        apps = serve.status().applications
        assert apps["pbt-local"].status == "RUNNING" and apps["pbt-side"].status == "RUNNING"
        ask = {"model": "persuadee", "messages": [{"role": "user", "content": "What is the capital of France?"}],
               "temperature": 0, "max_tokens": 16}
        for base, key in ((url, "none"), (side_url, client_key(side.serve))):
            reply = openai.OpenAI(base_url=base, api_key=key, timeout=120).chat.completions.create(**ask)
            assert reply.choices[0].message.content.strip()
        # Without the token, or with a wrong one: 401 before any route, an OpenAI-style error, nothing generated.
        for headers in ({}, {"Authorization": "Bearer side-s3cre"}, {"Authorization": "Bearer none"}):
            for method, path, body in (("POST", "/chat/completions", ask), ("GET", "/models", None)):
                denied = httpx.request(method, f"{side_url}{path}", json=body, headers=headers, timeout=60)
                assert denied.status_code == 401, (path, headers, denied.text)
                assert denied.headers["www-authenticate"].startswith("Bearer") and denied.json()["error"]["code"] == 401
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=side_url, api_key="none", timeout=60).models.list()
        # pbt's client says what to do about it.
        with pytest.raises(EndpointError, match=r"HTTP 401.*wants a bearer token: export it as \$PBT_API_KEY"):
            asyncio.run(ChatClient(side_url, max_retries=0, api_key="wrong").chat("persuadee", ask["messages"]))
        # KubeRay's probes hit the proxy, not the ingress: they keep working with a token set.
        assert httpx.get(f"http://127.0.0.1:{cfg.serve.port}/-/healthz", timeout=30).status_code == 200
    finally:
        serve.delete("pbt-side")
    assert serve.status().applications["pbt-local"].status == "RUNNING"  # the first run's app was never touched


# Listeners that Ray 2.60 opens on every interface whatever we configure, named so that any other one fails the
# test: each Serve replica's inter-deployment gRPC server binds "[::]:0" (ray/serve/_private/replica.py,
# ReplicaBase._on_initialized; no setting changes it). docs/reliability.md "Access" says how to firewall it.
UPSTREAM_WILDCARD_LISTENERS = ("ray::ServeReplica:",)


def test_every_listening_socket_of_the_local_stack_is_on_loopback(debater_app):
    """Issue 16 (5): the in-process cluster (GCS, raylet, agents, workers), Serve's proxy and the ingress listen
    on loopback only, so nobody else on the network reaches them."""
    import os

    import psutil

    me = psutil.Process(os.getpid())
    listening: dict[tuple[str, int], str] = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            name = proc.name()
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    listening[(conn.laddr.ip, conn.laddr.port)] = name
        except psutil.Error:  # a worker that exited meanwhile
            continue
    names = set(listening.values())
    assert any("gcs_server" in n for n in names) and any("raylet" in n for n in names), names  # the stack is all here
    cfg, _ = debater_app
    assert ("127.0.0.1", cfg.serve.port) in listening  # Serve's HTTP proxy
    loopback = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
    exposed = {addr: name for addr, name in listening.items()
               if addr[0] not in loopback and not name.startswith(UPSTREAM_WILDCARD_LISTENERS)}
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_the_engines_request_counters_are_on_rays_metrics_endpoint(debater_app):
    """Issue 17: vLLM's engine metrics (ray.serve.llm's log_engine_metrics, on by default) and Serve's request
    counters are exported on the node's Prometheus endpoint, where Ray's Grafana dashboards read them."""
    import re
    import time

    import httpx
    import ray

    from pbt_ray.serving.auth import auth_headers

    cfg, url = debater_app
    reply = httpx.post(f"{url}/chat/completions", headers=auth_headers(cfg.serve), timeout=120, json={
        "model": "persuadee", "messages": [{"role": "user", "content": "Say yes."}], "max_tokens": 4})
    assert reply.status_code == 200
    port = ray._private.worker.global_worker.node.metrics_export_port
    deadline, text = time.monotonic() + 90, ""
    while time.monotonic() < deadline:  # metrics are pushed to the agent every few seconds
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
        success = [float(v) for v in re.findall(r"^ray_vllm_request_success(?:_total)?\{[^}]*\} (\S+)$", text, re.M)]
        if sum(success) >= 1 and re.search(r"^ray_serve_num_http_requests(?:_total)?\{", text, re.M):
            break
        time.sleep(3)
    else:
        names = sorted({line.split("{")[0] for line in text.splitlines() if line.startswith(("ray_vllm", "ray_serve"))})
        pytest.fail(f"no engine request counter on :{port}/metrics after 90 s; vllm/serve metrics seen: {names[:40]}")
