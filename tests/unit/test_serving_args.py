"""The Serve app's configuration, checked by ray.serve.llm's own models (no cluster needed)."""

from pathlib import Path

import pytest
import yaml
from ray.serve.llm import LLMConfig, LLMServingArgs

from pbt_ray.config import load_config
from pbt_ray.serving.app import INGRESS_CLS, ServeError, base_url, check_port_free, llm_config_dict, serve_config_file, serving_args
from pbt_ray.serving.ingress import resolve_alias

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_llm_config_is_valid_and_cpu_shaped():
    cfg = load_config("local")
    d = llm_config_dict(cfg.serve.models[0], "/models/smol", {"A": "1"})
    llm = LLMConfig.model_validate(d)
    assert llm.model_id == "smollm2-135m-instruct"
    assert d["accelerator_config"] == {"kind": "cpu"}
    assert d["placement_group_config"] == {"bundles": [{"CPU": 1.0}]}
    assert d["engine_kwargs"] | {} == {"dtype": "float32", "max_model_len": 2048, "enforce_eager": True,
                                       "enable_prefix_caching": True, "trust_remote_code": False}
    env = d["runtime_env"]["env_vars"]
    assert env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0" and env["VLLM_CPU_KVCACHE_SPACE"] == "4" and env["A"] == "1"
    scaling = d["deployment_config"]["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["max_replicas"]) == (1, 1)


def test_gpu_llm_configs_are_valid_and_gpu_shaped():
    cfg = load_config("gpu-paper", ["serve.models.0.accelerator_type=H100", "serve.models.0.tensor_parallel_size=2"])
    args = serving_args(cfg, resolve=False)
    parsed = LLMServingArgs.model_validate(args)
    assert [c.model_id for c in parsed.llm_configs] == ["llama-3.1-8b-instruct", "mistral-7b-instruct-v0.2"]
    first = args["llm_configs"][0]
    assert "accelerator_config" not in first and first["accelerator_type"] == "H100"
    assert first["engine_kwargs"]["tensor_parallel_size"] == 2 and first["engine_kwargs"]["enforce_eager"] is False
    assert not any(k.startswith("VLLM_CPU") for k in first["runtime_env"]["env_vars"])
    assert "HF_HUB_OFFLINE" not in first["runtime_env"]["env_vars"]  # hub ids must be downloadable
    assert args["ingress_cls_config"] == {
        "ingress_cls": INGRESS_CLS,
        "ingress_extra_kwargs": {"model_aliases": {"persuader": "llama-3.1-8b-instruct",
                                                   "persuadee": "mistral-7b-instruct-v0.2",
                                                   "extractor": "mistral-7b-instruct-v0.2"},
                                 "api_key_env": "PBT_API_KEY", "api_key_file": None, "require_api_key": False},
    }


def test_extra_engine_kwargs_pass_through():
    cfg = load_config("local", ["serve.models.0.engine_kwargs.max_num_seqs=64"])
    assert llm_config_dict(cfg.serve.models[0], "/m", {})["engine_kwargs"]["max_num_seqs"] == 64


def test_role_aliases():
    aliases = {"persuader": "llama", "extractor": "mistral"}
    assert resolve_alias("persuader", aliases) == "llama"
    assert resolve_alias("extractor:my-adapter", aliases) == "mistral:my-adapter"
    assert resolve_alias("llama", aliases) == "llama"
    assert resolve_alias(None, aliases) is None


def test_gpu_deployment_file_is_generated_from_the_preset():
    on_disk = yaml.safe_load((ROOT / "deployments" / "debaters-gpu.yaml").read_text())
    assert on_disk == serve_config_file("gpu-paper"), "regenerate: pbt serve -c gpu-paper --print-serve-config"


def test_local_serve_config_carries_the_config_source_and_overrides(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: local\nname: my-run\n")
    spec = serve_config_file(str(path), ["serve.models.0.max_replicas=2"])["applications"][0]
    assert spec["import_path"] == "pbt_ray.serving.app:build_app"
    assert spec["args"] == {"config": str(path), "overrides": ["serve.models.0.max_replicas=2"]}
    assert load_config(spec["args"]["config"], spec["args"]["overrides"]).serve.models[0].max_replicas == 2


@pytest.mark.parametrize("name", ["debaters-cpu.yaml", "debaters-gpu.yaml"])
def test_deployment_files_are_valid_serve_configs(name):
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "deployments" / name).read_text()))
    app = schema.applications[0]
    assert app.name == f"pbt-{load_config(app.args['config'] if app.import_path.startswith('pbt') else 'gpu-paper').name}" and schema.http_options.host == "127.0.0.1"
    if app.import_path == "ray.serve.llm:build_openai_app":
        LLMServingArgs.model_validate(app.args)
    else:
        assert app.import_path == "pbt_ray.serving.app:build_app"
        assert load_config(app.args["config"], app.args["overrides"]).serve.app_name == app.name


def test_busy_port_is_reported_with_a_fix():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ServeError, match=rf"Port {port} on 127.0.0.1 is already in use.*serve.port={port + 1}"):
            check_port_free("127.0.0.1", port)


def test_base_url():
    cfg = load_config("local", ["serve.host=0.0.0.0", "serve.port=8100", "serve.route_prefix=/pbt"])
    assert base_url(cfg.serve) == "http://127.0.0.1:8100/pbt/v1"


def test_the_ingress_admits_what_the_engines_hold_and_bounds_the_queue():
    """Issue 16.4: beyond the engines' peak (max_ongoing_requests x max_replicas, summed) the proxy queues at most
    serve.max_queued_requests, then answers 503 with Retry-After."""
    cfg = load_config("gpu-paper", ["serve.max_queued_requests=32", "serve.retry_after_s=7"])
    admission = serving_args(cfg, resolve=False)["ingress_deployment_config"]
    assert admission == {"max_ongoing_requests": sum(m.max_ongoing_requests * m.max_replicas for m in cfg.serve.models),
                         "max_queued_requests": 32, "backpressure_config": {"status_code": 503, "retry_after_s": 7}}
    LLMServingArgs.model_validate(serving_args(cfg, resolve=False))  # Ray accepts it
    endpoint = yaml.safe_load(yaml.safe_load((ROOT / "deployments" / "kuberay" / "rayservice-pbt-endpoint.yaml").read_text())
                              ["spec"]["serveConfigV2"])["applications"][0]["args"]
    (llm,) = endpoint["llm_configs"]
    peak = llm["deployment_config"]["max_ongoing_requests"] * llm["deployment_config"]["autoscaling_config"]["max_replicas"]
    assert endpoint["ingress_deployment_config"]["max_ongoing_requests"] == peak


def test_adding_the_trained_model_keeps_the_debaters_deployment_versions(tmp_path, monkeypatch):
    """Serve restarts a deployment whose version changes and gives an unversioned one a random version per deploy:
    every deployment gets a digest of what it runs, so adding the trained model restarts only the ingress."""
    import types

    import ray
    from ray.serve.llm import build_openai_app

    # ray.serve.llm's builder reads the driver's runtime env, which would start a Ray cluster here (no Ray in unit tests).
    monkeypatch.setattr(ray, "get_runtime_context", lambda: types.SimpleNamespace(runtime_env={}))

    from pbt_ray.serving.app import deployment_versions, with_stable_versions
    from pbt_ray.serving.trained import with_trained_model

    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "config.json").write_text("{}")
    cfg = load_config("local", [])
    base_only = serving_args(cfg, resolve=False)
    with_trained = serving_args(with_trained_model(cfg, merged), resolve=False)
    models, ingress = deployment_versions(base_only)
    models2, ingress2 = deployment_versions(with_trained)
    assert deployment_versions(base_only) == (models, ingress)  # the same app, the same versions
    assert models2["smollm2-135m-instruct"] == models["smollm2-135m-instruct"] and ingress2 != ingress
    (merged / "model.safetensors").write_bytes(b"re-merged")  # new weights in the same directory: a new version
    assert deployment_versions(with_trained)[0]["pbt-trained"] != models2["pbt-trained"]

    app = with_stable_versions(build_openai_app(with_trained), with_trained, log=lambda line: pytest.fail(line))
    children = app._bound_deployment.init_kwargs["llm_deployments"]
    assert {k: c._bound_deployment.version for k, c in children.items()} == deployment_versions(with_trained)[0]
    assert app._bound_deployment.version == deployment_versions(with_trained)[1]
