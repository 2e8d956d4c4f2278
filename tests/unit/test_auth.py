"""Issue 16.5: the opt-in bearer token of the OpenAI ingress, and credentials kept out of printed configs and
Serve config files. The ingress's wiring into a real Serve replica is proven in
tests/integration/test_serve_app.py::test_two_runs_share_one_cluster_side_by_side."""

import asyncio

import httpx
import pytest
import yaml

from pbt_ray.config import REDACTED, dump_config, load_config
from pbt_ray.serving.auth import NO_KEY, AuthError, BearerAuth, auth_headers, client_key, read_token


@pytest.fixture
def no_env_token(monkeypatch):
    monkeypatch.delenv("PBT_API_KEY", raising=False)


def test_token_comes_from_the_file_first_then_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PBT_API_KEY", " from-env \n")
    assert read_token() == "from-env"
    secret = tmp_path / "token"
    secret.write_text("from-file\n")
    assert read_token("PBT_API_KEY", str(secret)) == "from-file"
    monkeypatch.setenv("PBT_API_KEY", "")
    assert read_token() is None  # an empty variable is no token


def test_a_configured_secret_file_that_is_missing_or_empty_is_an_error_not_an_open_endpoint(tmp_path):
    with pytest.raises(AuthError, match=r"serve.api_key_file .*/absent: cannot read the token"):
        read_token("PBT_API_KEY", str(tmp_path / "absent"))
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(AuthError, match="is empty"):
        read_token("PBT_API_KEY", str(tmp_path / "empty"))


def test_clients_send_the_configured_token(tmp_path, monkeypatch, no_env_token):
    from pbt_ray.dialogue.pipeline import make_client
    from pbt_ray.serving.client import ChatClient

    cfg = load_config("local")
    assert client_key(cfg.serve) == NO_KEY and auth_headers(cfg.serve) == {}
    assert ChatClient("http://x/v1")._client.api_key == NO_KEY
    monkeypatch.setenv("PBT_API_KEY", "s3cret")
    assert ChatClient("http://x/v1")._client.api_key == "s3cret"
    assert auth_headers(cfg.serve) == {"Authorization": "Bearer s3cret"}
    (tmp_path / "tok").write_text("mounted")
    mounted = load_config("local", [f"serve.api_key_file={tmp_path / 'tok'}", "serve.api_key_env=OTHER_TOKEN"])
    assert client_key(mounted.serve) == "mounted"
    # Growers get where the token is, never the token, and read it themselves.
    transport = {"kind": "http", "url": "http://x/v1", "api_key_env": "OTHER_TOKEN", "api_key_file": str(tmp_path / "tok")}
    assert make_client(transport, 5)._client.api_key == "mounted"


def _app_with_token(token: str):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            message = await receive()
            await send({"type": "lifespan.startup.complete"}) if message["type"] == "lifespan.startup" else None
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    return BearerAuth(app, token)


def _get(app, headers: dict[str, str]) -> httpx.Response:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingress") as client:
            return await client.get("/v1/models", headers=headers)

    return asyncio.run(go())


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer s3cret-but-longer"},
                                     {"Authorization": "Basic s3cret"}, {"Authorization": "s3cret"}])
def test_requests_without_the_right_bearer_token_get_401_with_an_openai_error(headers):
    response = _get(_app_with_token("s3cret"), headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    error = response.json()["error"]
    assert error["code"] == 401 and "bearer token" in error["message"]


@pytest.mark.parametrize("value", ["Bearer s3cret", "bearer s3cret"])
def test_the_right_token_passes(value):
    response = _get(_app_with_token("s3cret"), {"Authorization": value})
    assert (response.status_code, response.text) == (200, "ok")


def test_the_ingress_refuses_to_start_open_when_a_token_is_required(monkeypatch, no_env_token):
    from pbt_ray.serving.ingress import RoleAliasIngress

    with pytest.raises(AuthError, match=r"require_api_key is set but this ingress found no token \(\$PBT_API_KEY is unset"):
        RoleAliasIngress({}, {}, require_api_key=True)
    RoleAliasIngress({}, {})  # opt-in: no token, no requirement, no auth


def test_the_ingress_wraps_serves_asgi_app_and_refuses_when_the_hook_is_gone(monkeypatch):
    from pbt_ray.serving.ingress import RoleAliasIngress

    monkeypatch.setenv("PBT_API_KEY", "s3cret")
    with pytest.raises(AuthError, match="no _set_asgi_app hook"):
        RoleAliasIngress({}, {})  # a bare class: nothing would ever install the token

    class ReplicaWrapper:  # the shape of Serve's ASGIAppReplicaWrapper (Ray 2.60)
        def _set_asgi_app(self, app):
            self._asgi_app = app

    class Replica(RoleAliasIngress, ReplicaWrapper):
        pass

    replica = Replica({}, {})
    replica._set_asgi_app("fastapi-app")
    assert isinstance(replica._asgi_app, BearerAuth) and replica._asgi_app.app == "fastapi-app"


def test_serve_config_files_name_where_the_token_is_never_its_value(monkeypatch):
    from pbt_ray.serving.app import serve_config_file, serving_args

    monkeypatch.setenv("PBT_API_KEY", "s3cret")
    cfg = load_config("gpu-paper", ["serve.require_api_key=true", "serve.api_key_file=/var/run/secrets/pbt/token"])
    extra = serving_args(cfg, resolve=False)["ingress_cls_config"]["ingress_extra_kwargs"]
    assert {k: extra[k] for k in ("api_key_env", "api_key_file", "require_api_key")} == {
        "api_key_env": "PBT_API_KEY", "api_key_file": "/var/run/secrets/pbt/token", "require_api_key": True}
    overrides = ["ray.env_vars.HF_TOKEN=hf_abc", "ray.env_vars.AWS_SECRET_ACCESS_KEY=xyz", "ray.env_vars.LOG_LEVEL=debug"]
    text = yaml.safe_dump(serve_config_file("gpu-paper", overrides))
    assert "s3cret" not in text and "hf_abc" not in text and "xyz" not in text
    assert "LOG_LEVEL: debug" in text  # ordinary variables still travel
    local = yaml.safe_dump(serve_config_file("local", overrides))  # args are the overrides themselves
    assert "hf_abc" not in local and "xyz" not in local and "ray.env_vars.LOG_LEVEL=debug" in local


@pytest.mark.parametrize("name,secret", [("HF_TOKEN", True), ("AWS_SECRET_ACCESS_KEY", True), ("WANDB_API_KEY", True),
                                         ("PBT_API_KEY", True), ("MLFLOW_TRACKING_PASSWORD", True), ("AWS_SESSION_TOKEN", True),
                                         ("TOKENIZERS_PARALLELISM", False), ("HF_HUB_OFFLINE", False), ("KEYWORD", False)])
def test_credential_names(name, secret):
    from pbt_ray.config import is_secret_name

    assert is_secret_name(name) is secret


def test_pbt_config_redacts_credentials_in_env_vars(capsys):
    from pbt_ray.cli import main

    cfg = load_config("local", ["ray.env_vars.HF_TOKEN=hf_abc", "ray.env_vars.WANDB_API_KEY=w123", "ray.env_vars.MODE=x"])
    dumped = yaml.safe_load(dump_config(cfg))["ray"]["env_vars"]
    assert dumped == {"HF_TOKEN": REDACTED, "WANDB_API_KEY": REDACTED, "MODE": "x"}
    assert main(["config", "-c", "local", "ray.env_vars.HF_TOKEN=hf_abc"]) == 0
    out = capsys.readouterr().out
    assert "hf_abc" not in out and f"HF_TOKEN: {REDACTED}" in out


def test_a_missing_secret_file_is_one_line_from_the_cli(tmp_path, capsys):
    from pbt_ray.cli import main

    code = main(["eval", "are-you-sure", f"serve.api_key_file={tmp_path / 'absent'}", f"runs_dir={tmp_path}",
                 "--url", "http://127.0.0.1:9/v1"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "serve.api_key_file" in err and "Traceback" not in err


def test_an_adapter_of_a_model_without_lora_or_a_missing_adapter_is_a_404_not_a_500(no_env_token):
    """Issue 16.6, found by tests/integration/test_bad_requests.py: `persuadee:no-such-adapter` reached the engine,
    which has no LoRA, and came back as a 500."""
    from ray.llm._internal.serve.core.configs.openai_api_models import OpenAIHTTPException

    from pbt_ray.serving.ingress import RoleAliasIngress

    from ray.llm._internal.serve.core.configs.openai_api_models import ModelCard

    cards = {m: ModelCard(id=m, object="model", owned_by="pbt", permission=[], metadata={}) for m in ("smol", "llama")}
    ingress = RoleAliasIngress({"smol": None, "llama": None}, cards, model_aliases={"persuadee": "smol"},
                               lora_paths={"llama": "s3://b/adapters"})

    async def metadata(model_id, base_path):
        if model_id != "llama:pbt-round1":
            from fastapi import HTTPException
            raise HTTPException(404, "no adapter_config.json")
        return {"max_request_context_length": 2048}

    ingress._get_lora_model_metadata_func = metadata
    with pytest.raises(OpenAIHTTPException) as caught:  # its text is in .message, not str()
        asyncio.run(ingress._check_adapter("persuadee:no-such-adapter", "smol:no-such-adapter"))
    assert caught.value.status_code == 404 and "adapter 'no-such-adapter' of 'smol', which serves no LoRA" in caught.value.message
    with pytest.raises(OpenAIHTTPException) as caught:
        asyncio.run(ingress._check_adapter("llama:nope", "llama:nope"))
    assert caught.value.status_code == 404 and "no adapter 'nope' for 'llama' under s3://b/adapters" in caught.value.message
    asyncio.run(ingress._check_adapter("llama:pbt-round1", "llama:pbt-round1"))  # exists: passes, and is remembered
    assert "llama:pbt-round1" in ingress._known_adapters
    asyncio.run(ingress._check_adapter("persuadee", "smol"))  # no adapter asked: nothing to check
