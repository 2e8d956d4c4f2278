"""Starting and joining Ray clusters, and the environment every process of the loop needs.

Locally we start Ray in-process with a private temp dir (never `ray stop`, which kills every Ray
process on the machine) and bind it to loopback. Inside `ray job submit` (RAY_ADDRESS set) or with
``ray.address`` in the config we join the existing cluster instead and leave its settings alone.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator

from pbt_ray.config import PBTConfig, RayConfig

# Settings for an in-process cluster on a laptop or CI box (STACK.md "Recommendations", §8).
LOCAL_CLUSTER_ENV = {
    # Bind every Ray listener (GCS, raylet, dashboard, gloo MASTER_ADDR) to 127.0.0.1.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # A new local cluster otherwise turns token auth on, and `ray job submit` then fails to authenticate.
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
}
# Settings for every worker of the loop, local or on a cluster.
WORKER_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    # Train V2 reroutes print() through a logger: doubled lines and dill bytecode dumps (STACK.md training §4).
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}
# vLLM on the CPU: by default it reserves one of two cores and binds the worker to a single thread.
CPU_ENGINE_ENV = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def worker_env(cfg: PBTConfig) -> dict[str, str]:
    env = dict(WORKER_ENV)
    if all_sources_local(cfg):
        env["HF_HUB_OFFLINE"] = "1"  # nothing to download: fail fast instead of timing out on a hub
    env.update(cfg.ray.env_vars)
    return env


def all_sources_local(cfg: PBTConfig) -> bool:
    from pbt_ray.models import looks_like_hub_id

    return not any(looks_like_hub_id(m.source) for m in cfg.serve.models)


def job_env_vars() -> dict[str, str]:
    """Env vars of the runtime_env of the `ray job submit` job this driver runs in ({} outside a job).

    Ray refuses to merge a job's runtime_env with a ray.init runtime_env that sets the same variable, so the
    driver passes only the variables the job did not set (the job's values win)."""
    import json

    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return {}
    try:
        return dict((json.loads(raw).get("runtime_env") or {}).get("env_vars") or {})
    except (ValueError, AttributeError):
        return {}


def cluster_address(cfg: RayConfig) -> str | None:
    return cfg.address or os.environ.get("RAY_ADDRESS") or None


def quiet_driver_logs(verbose: bool = False) -> None:
    """Keep library INFO chatter (deployment options, Triton probing, every HTTP call) off the console.

    Ray Serve and ray.llm (re)configure their loggers when they start, so callers run this again after
    starting Serve; pbt's own progress goes through ``print`` and is unaffected.
    """
    import logging

    if verbose:
        return
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    noisy = ("ray", "vllm", "httpx", "httpcore", "openai", "urllib3", "filelock")
    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] in noisy]
    for name in ["", *noisy, *names]:
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


def local_logical_cpus(cfg: PBTConfig) -> int:
    """Logical CPUs of an in-process cluster: the loop's peak, not the machine's cores.

    The peak is the debater app (a CPU engine replica holds 2: its Serve actor and its engine bundle), a
    trained model served next to it (round k >= 2 trains while round k-1's model is served; every round's
    evaluation serves its own), the ingress, and the largest of the Train workers and the growers, which
    run while the app is up. The engines' threads do the real work, so oversubscribing a 2-core machine is
    safe, where too few logical CPUs would leave actors pending.
    """
    from pbt_ray.serving.app import replica_bundles

    app = sum(b.get("CPU", 0.0) for b in replica_bundles(cfg))
    template = cfg.serve.models[0]
    # PBT serves one trained model next to the app; the red-teaming recipe two (its attacker and its judge).
    trained = (2 if cfg.recipe == "redteam" else 1) * (1.0 + (template.cpus_per_replica if template.accelerator == "cpu" else 0.0))
    stage = max(cfg.train.num_workers * cfg.train.cpus_per_worker, cfg.grow.max_growers * cfg.grow.cpus_per_grower, 1.0)
    return max(6, math.ceil(app + trained + 1.0 + stage))


class StorageError(ValueError):
    """The run directory is not where every node of the cluster can read and write it."""


def check_shared_storage(cfg: PBTConfig, nodes: int | None = None) -> None:
    """Refuse a node-local runs_dir on a cluster of several nodes: growers would write trees to their own disks,
    the merged trained model would land on the driver's disk while its replicas load it elsewhere, and default
    checkpoints would stay node-local (issue 14.5). ``nodes``: the alive nodes (None: ask Ray)."""
    if nodes is None:
        import ray

        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    if nodes > 1 and "://" in cfg.runs_dir:
        raise StorageError(
            f"runs_dir {cfg.runs_dir} is mirrored through a working copy on the driver, which the cluster's other "
            f"{nodes - 1} node(s) cannot see: growers, Train workers and replicas there would miss it. Use a filesystem "
            "every node mounts (runs_dir=/mnt/shared/runs shared_runs_dir=true); train.storage_path takes a URI")
    if nodes > 1 and not cfg.shared_runs_dir:
        raise StorageError(
            f"runs_dir {cfg.runs_dir} is local to this node and the cluster has {nodes} nodes: stages on other nodes "
            "would write where the driver cannot read. Put runs_dir on a filesystem every node mounts at the same "
            "path and declare it: runs_dir=/mnt/shared/runs shared_runs_dir=true")


_local_logs: str | None = None  # the temp dir of the last in-process cluster: kept when a command fails


def ray_logs_hint() -> str:
    """Where the logs of a failed Ray task are, for the one-line error `pbt` prints."""
    if _local_logs:
        return f"Ray's logs: {_local_logs}/session_latest/logs"
    return "Ray's logs: /tmp/ray/session_latest/logs on the cluster's nodes (`ray logs cluster` lists them)"


@contextlib.contextmanager
def ray_cluster(cfg: PBTConfig, log=print) -> Iterator[None]:
    """Join the configured cluster, or run an in-process one for the duration of the block."""
    import ray

    global _local_logs
    if ray.is_initialized():  # a caller (a test fixture, a job) owns the connection
        check_shared_storage(cfg)
        yield
        return
    env = worker_env(cfg)
    address = cluster_address(cfg.ray)
    if address:
        _local_logs = None
        quiet_driver_logs(cfg.ray.log_to_driver)
        env = {k: v for k, v in env.items() if k not in job_env_vars()}
        ray.init(address=address, runtime_env={"env_vars": env} if env else None, log_to_driver=cfg.ray.log_to_driver)
        try:
            check_shared_storage(cfg)
            yield
        finally:
            ray.shutdown()
        return

    os.environ.update({k: v for k, v in {**LOCAL_CLUSTER_ENV, **env}.items() if k not in os.environ})
    if os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0":
        # Ray reads this variable into a constant when it is first imported, which may have happened before
        # we set it (the processes it spawns read the environment afresh): correct the driver's copy.
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    # Unix socket paths are limited to 107 bytes, so keep the temp dir short (not under a deep $TMPDIR).
    temp_dir = tempfile.mkdtemp(prefix="pbt-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
    _local_logs = temp_dir
    num_cpus = cfg.ray.num_cpus or max(local_logical_cpus(cfg), os.cpu_count() or 1)
    quiet_driver_logs(cfg.ray.log_to_driver)
    log(f"[pbt] starting an in-process Ray cluster ({num_cpus} logical CPUs, logs in {temp_dir})")
    ray.init(
        address="local",
        num_cpus=num_cpus,
        object_store_memory=cfg.ray.object_store_memory_mb * 2**20 if cfg.ray.object_store_memory_mb else None,
        include_dashboard=cfg.ray.include_dashboard,
        _temp_dir=temp_dir,
        runtime_env={"env_vars": env},
        log_to_driver=cfg.ray.log_to_driver,
    )
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        with contextlib.suppress(Exception):
            import logging

            from ray import serve

            logging.getLogger("ray.serve").setLevel(logging.WARNING)  # "Nothing to shut down" when Serve never ran
            serve.shutdown()
        ray.shutdown()
        if failed:
            print(f"[pbt] Ray logs kept in {temp_dir}", file=sys.stderr)
        else:
            shutil.rmtree(temp_dir, ignore_errors=True)
