"""`pbt train` on the driver: check everything, request the workers, show progress, export the adapter.

Every check that can fail runs before Ray Train asks for a placement group: the pairs, the model (chat
template, context length, LoRA targets), the storage path, and whether the cluster can ever hold the
requested workers (a request that can never be satisfied otherwise waits forever, the most common
multi-node complaint in ANCHORS.md).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from pbt_ray.config import PBTConfig, TrainConfig
from pbt_ray.training.data import TrainDataError, check_model, check_pairs_file, pairs_files, resolve_model_path

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


class TrainError(RuntimeError):
    """Training could not start or did not finish; the message says why and what to change."""


def worker_resources(tcfg: TrainConfig) -> dict[str, float]:
    need = {"CPU": tcfg.cpus_per_worker}
    if tcfg.use_gpu:
        need["GPU"] = 1.0
    return need


def workers_that_fit(need: dict[str, float], nodes: list[dict[str, float]]) -> int:
    """How many workers with ``need`` the nodes can hold at once (each worker on one node)."""
    total = 0
    for node in nodes:
        total += int(min(node.get(key, 0.0) // amount for key, amount in need.items() if amount > 0))
    return total


def check_resources(tcfg: TrainConfig, nodes: list[dict[str, float]], busy: bool = False) -> None:
    """Fail fast, with the numbers, when the cluster's nodes can never hold the requested workers
    (``busy``: ``nodes`` are the resources free right now, and other work holds the rest)."""
    need = worker_resources(tcfg)
    fit = workers_that_fit(need, nodes)
    wanted = max(tcfg.workers("dpo"), tcfg.workers("sft") if tcfg.sft else 0)
    if fit < wanted:
        summary = "; ".join(f"node {i}: " + ", ".join(f"{k} {v:g}" for k, v in sorted(n.items()) if k in need)
                            for i, n in enumerate(nodes)) or "no nodes"
        if busy:
            raise TrainError(
                f"train needs {wanted} workers x {need} but only {fit} fit in what is free now ({summary}); "
                "the rest is held by other work on the cluster (a running Serve app, another job). Stop it, lower "
                "train.num_workers or train.cpus_per_worker, or give it time with ray.resource_wait_s.")
        raise TrainError(
            f"train needs {wanted} workers x {need} but the cluster's nodes can hold {fit} at most "
            f"({summary}). Lower train.num_workers or train.cpus_per_worker, or add nodes "
            "(an autoscaling cluster: raise its max workers for this node type and set ray.autoscaling=true).")


def resolve_storage(cfg: PBTConfig) -> str:
    """An absolute local path or a URI Ray Train can write to; checked now, not at the first checkpoint."""
    raw = cfg.train.storage_path or str(cfg.run_dir / "checkpoints")
    if "://" in raw:
        import pyarrow.fs

        try:
            fs, path = pyarrow.fs.FileSystem.from_uri(raw)
            fs.get_file_info(path)
        except Exception as exc:  # noqa: BLE001 - credentials, DNS, unknown scheme: one clear message
            raise TrainError(f"train.storage_path {raw} is not reachable ({exc}); check the URI and credentials") from None
        return raw
    path = Path(raw).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".pbt-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise TrainError(f"train.storage_path {path} is not writable ({exc})") from None
    return str(path)


def prepare(cfg: PBTConfig, pairs: str | None = None, log=print) -> dict[str, Any]:
    """All driver-side checks; returns what the workers need."""
    tcfg = cfg.train
    check_trackers(tcfg.loggers)
    if not tcfg.dpo:
        return _prepare_sft_only(cfg, pairs, log)
    files = pairs_files(pairs or tcfg.pairs or cfg.run_dir / "preferences")
    rows = check_pairs_file(files["train"])
    dev_rows = check_pairs_file(files["dev"], required=False) if "dev" in files else 0
    if dev_rows == 0:
        files.pop("dev", None)
    model_path = resolve_model_path(tcfg.base_model)
    info = check_model(model_path, tcfg.max_length, list(tcfg.lora_targets))
    storage = resolve_storage(cfg)
    steps = check_warmup(tcfg, rows)
    log(f"[pbt] training {info['model_type']} ({info['parameters'] / 1e6:.0f}M parameters) from {model_path}: "
        f"{rows} train pairs, {dev_rows} dev pairs; {tcfg.num_workers} workers, "
        f"ZeRO-{tcfg.zero_stage}{' + offload' if tcfg.offload_optimizer or tcfg.offload_params else ''}, "
        f"LoRA r={tcfg.lora_r} on {', '.join(tcfg.lora_targets)}; "
        f"{'SFT ' + str(tcfg.sft_max_steps) + ' steps of ' + str(tcfg.global_batch('sft')) + ', then ' if tcfg.sft else ''}"
        f"DPO {steps} steps of {tcfg.global_batch()} pairs ({tcfg.workers()} x {tcfg.per_device_batch_size} x "
        f"{tcfg.accumulation()}), {tcfg.warmup_steps} warm-up; checkpoints in {storage}")
    return {"files": {k: str(v) for k, v in files.items()}, "model_path": model_path, "storage": storage,
            "rows": rows, "dev_rows": dev_rows, "model": info}


def sft_file(pairs_dir: str | Path) -> Path:
    """The SFT records `pbt mine` (or a recipe's mining) wrote next to the pairs: ``<dir>/sft/train.parquet``."""
    root = Path(pairs_dir).expanduser()
    return root.parent / "sft" / "train.parquet" if root.name == "pairs" else root / "sft" / "train.parquet"


def _prepare_sft_only(cfg: PBTConfig, pairs: str | None, log) -> dict[str, Any]:
    """train.dpo off: the checks of an SFT-only run (prompt/completion records, the model, the warm-up)."""
    tcfg = cfg.train
    path = sft_file(pairs or tcfg.pairs or cfg.run_dir / "preferences")
    if not path.is_file():
        raise TrainDataError(f"no SFT records {path}; train.dpo is off, so training needs <pairs dir>/sft/train.parquet")
    rows = check_pairs_file(path, columns=("prompt", "completion"))
    model_path = resolve_model_path(tcfg.base_model)
    info = check_model(model_path, tcfg.max_length, list(tcfg.lora_targets))
    storage = resolve_storage(cfg)
    check_warmup(tcfg, rows)
    log(f"[pbt] training {info['model_type']} ({info['parameters'] / 1e6:.0f}M parameters) from {model_path}: SFT only, "
        f"{rows} records, {tcfg.sft_max_steps} steps of {tcfg.global_batch('sft')}; {tcfg.workers('sft')} workers, "
        f"ZeRO-{tcfg.zero_stage}, LoRA r={tcfg.lora_r}; checkpoints in {storage}")
    return {"files": {"sft": str(path)}, "model_path": model_path, "storage": storage, "rows": rows, "dev_rows": 0,
            "model": info}


# train.loggers -> the module transformers' integration needs for it (its own check runs only inside the workers,
# after the cluster has been sized and the model shipped; issue 17 asks for the refusal before any worker starts).
TRACKER_MODULES = {"mlflow": ("mlflow",), "wandb": ("wandb",), "tensorboard": ("tensorboard", "tensorboardX")}


def check_trackers(loggers, find_spec=None) -> None:
    """Refuse a tracker that is not installed where pbt runs (the workers run the same environment or image)."""
    import importlib.util

    find_spec = find_spec or importlib.util.find_spec
    missing = [name for name in loggers if not any(find_spec(m) for m in TRACKER_MODULES[name])]
    if missing:
        raise TrainError(f"train.loggers asks for {', '.join(missing)}, not installed here: pip install "
                         f"{' '.join(TRACKER_MODULES[m][0] for m in missing)} (and in the cluster's image), or drop "
                         f"{'it' if len(missing) == 1 else 'them'} from train.loggers")


def optimizer_steps(tcfg: TrainConfig, rows: int) -> int:
    """DPO optimizer steps for ``rows`` train pairs, as transformers counts them: each worker's sampler takes
    ceil(rows / workers) pairs, in micro-batches; an epoch is micro-batches // accumulation (at least 1)."""
    import math

    if tcfg.max_steps > 0:
        return tcfg.max_steps
    micro_batches = math.ceil(math.ceil(rows / tcfg.workers()) / tcfg.per_device_batch_size)
    return math.ceil(tcfg.epochs * max(1, micro_batches // tcfg.accumulation()))


def check_warmup(tcfg: TrainConfig, rows: int) -> int:
    """Refuse a schedule whose warm-up never ends: with warmup_steps >= the optimizer steps, the learning rate
    never reaches its peak (the reference's 280-pair batches gave 64 steps against 100 warm-up steps)."""
    steps = optimizer_steps(tcfg, rows)
    for stage, total in (("DPO", steps if tcfg.dpo else None), ("SFT", tcfg.sft_max_steps if tcfg.sft else None)):
        if total is not None and tcfg.warmup_steps >= total:
            raise TrainError(
                f"train.warmup_steps {tcfg.warmup_steps} is not below the {total} {stage} optimizer steps of this run "
                f"({rows} pairs, {tcfg.global_batch('sft' if stage == 'SFT' else 'dpo')} per step"
                f"{'' if stage == 'SFT' else f', {tcfg.epochs:g} epochs'}): the learning rate would never reach its "
                f"peak. Lower train.warmup_steps (e.g. {max(0, total // 10)}), the batch, or train on more pairs")
    return steps


def training_run_name(cfg: PBTConfig, files: dict[str, str], model_path: str, attempt: int = 0) -> str:
    """The Ray Train run name: ``train.run_name`` and a fingerprint of what the run trains (the train config
    slice of :mod:`pbt_ray.stages`, the pairs files, the base model, the `--from` attempt). New pairs or settings
    get a new run that starts at step 0; an identical rerun gets the same name and resumes the interrupted run."""
    from pbt_ray.stages import PBT_STAGES, config_slice, digest, files_digest, stage_named

    key = digest({"config": config_slice(stage_named(PBT_STAGES, "train"), cfg.model_dump(mode="json")),
                  "pairs": files_digest([Path(p) for p in files.values()]), "base": model_path, "attempt": attempt})
    return f"{cfg.train.run_name}-{key[:10]}"


def train(cfg: PBTConfig, pairs: str | None = None, *, log=print, progress: bool = True,
          record_samples: bool = False, plan: dict[str, Any] | None = None, attempt: int = 0) -> dict[str, Any]:
    """Run (SFT, then) DPO under Ray Train; returns the final metrics. Must run inside ``ray_cluster``;
    ``plan`` is :func:`prepare`'s result when the caller ran the checks before starting Ray; ``attempt`` > 0
    (the loop's `--from train`) trains afresh instead of resuming a finished run with the same fingerprint."""
    from pbt_ray import tracking

    if tracking.active() is None and any(name in tracking.DRIVER_TRACKERS for name in cfg.train.loggers):
        with tracking.session(cfg, log) as trackers:  # `pbt train`, an experiment cell: the run's own tracker run
            result = train(cfg, pairs, log=log, progress=progress, record_samples=record_samples, plan=plan,
                           attempt=attempt)
            trackers.log_metrics(tracking.numeric_leaves(
                {k: v for k, v in result.items() if k not in ("adapter", "base_model", "merged")}, "train"))
            return result
    tcfg = cfg.train
    plan = plan or prepare(cfg, pairs, log=log)
    run_name = training_run_name(cfg, plan["files"], plan["model_path"], attempt)
    if cfg.ray.autoscaling:
        log("[pbt] ray.autoscaling: not checking the present nodes; the autoscaler adds what the workers need")
    else:
        from pbt_ray.resources import wait_for

        from pbt_ray.resources import cluster_nodes as nodes_now

        # Totals first (can this cluster ever hold the workers?), then what is free now: resources held by the
        # Serve app or another job would otherwise leave the workers pending forever.
        check_resources(tcfg, nodes_now())
        wait_for(lambda _: check_resources(tcfg, nodes_now(available=True), busy=True), cfg.ray.resource_wait_s, log=log)
    model_path = plan["model_path"]
    started = time.monotonic()
    if not tcfg.dpo:  # SFT only: its adapter is the result, on the base itself
        result = _fit(cfg, "sft", f"{run_name}-sft", model_path, {"train": plan["files"]["sft"]}, plan["storage"], log,
                      progress)
        metrics = {**dict(result.metrics or {}), "seconds": round(time.monotonic() - started, 1),
                   "run_name": f"{run_name}-sft", "stages": ["sft"]}
        return {**metrics, **export(result.checkpoint, cfg, metrics, log=log, base_model=model_path)}
    if tcfg.sft:
        model_path = _sft_stage(cfg, plan, log, progress, f"{run_name}-sft")
    out_dir = cfg.run_dir / "train"
    samples_dir = out_dir / "samples" if record_samples else None
    log(f"[pbt] Ray Train run {run_name} in {plan['storage']} (a rerun with the same pairs and settings resumes it)")
    result = _fit(cfg, "dpo", run_name, model_path, plan["files"], plan["storage"], log, progress,
                  samples_dir=str(samples_dir) if samples_dir else None)
    metrics = dict(result.metrics or {})
    metrics["seconds"] = round(time.monotonic() - started, 1)
    metrics["run_name"] = run_name
    exported = export(result.checkpoint, cfg, metrics, log=log, base_model=model_path)
    return {**metrics, **exported}


SFT_MARKER = "pbt_sft.json"


def _sft_stage(cfg: PBTConfig, plan: dict[str, Any], log, progress: bool, run_name: str) -> str:
    """SFT on the chosen replies (PBT_SPEC.md §4.3), merged into the base: DPO then trains a fresh adapter on
    the merged model, whose adapter-disabled forward is the SFT model (the reference §4.4 recommends). The merged
    model is reused only when it came from this very SFT run (``run_name`` carries its fingerprint)."""
    merged = cfg.run_dir / "sft-merged"
    marker = merged / SFT_MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("run_name") == run_name:
        log(f"[pbt] SFT already done: {merged}")
        return str(merged)
    records = sft_file(Path(plan["files"]["train"]).parent)
    if not records.is_file():
        raise TrainDataError(f"train.sft is on but {records} does not exist; it is written by `pbt mine`")
    check_pairs_file(records, columns=("prompt", "completion"))
    result = _fit(cfg, "sft", run_name, plan["model_path"], {"train": str(records)}, plan["storage"], log, progress)
    with result.checkpoint.as_directory() as directory:
        tmp = merged.with_name(".sft-merged.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        merge_adapter(plan["model_path"], Path(directory), tmp, log=log)
    (tmp / SFT_MARKER).write_text(json.dumps({"run_name": run_name, "metrics": dict(result.metrics or {})},
                                             default=str) + "\n")
    shutil.rmtree(merged, ignore_errors=True)
    tmp.rename(merged)
    log(f"[pbt] SFT merged into {merged}")
    return str(merged)


def dev_reader(cfg: PBTConfig, log=print) -> dict[str, Any]:
    """How the in-training dev metric reads answers: the one instrument (extract.mode) through the debater
    app's extractor when the app is running in this cluster (as in `pbt run`), else the deterministic reader
    alone, said once in the log."""
    from pbt_ray.dialogue.pipeline import transport_for

    try:
        from ray import serve

        status = serve.status().applications.get(cfg.serve.app_name)
        running = status is not None and str(status.status).endswith("RUNNING")
    except Exception:  # noqa: BLE001 - no Serve in this cluster
        running = False
    if running and not cfg.grow.endpoint:
        return {"mode": cfg.extract.mode, "transport": transport_for(cfg, "")}
    if cfg.train.generation_eval:
        log(f"[pbt] dev metric: no debater app '{cfg.serve.app_name}' running, so dev replies are read by the "
            "deterministic reader alone (extract.mode rules)")
    return {"mode": "rules", "transport": None}


def ship_files(files: dict[str, str]) -> dict[str, Any]:
    """The pairs files as bytes in the train config: worker nodes of a multi-node cluster cannot read the
    driver's disk, and pairs files are small (a few MB per 10k pairs). Workers write them to a temp dir."""
    return {name: {"name": Path(path).name, "data": Path(path).read_bytes()} for name, path in files.items()}


def _fit(cfg: PBTConfig, stage: str, run_name: str, model_path: str, files: dict[str, str], storage: str, log,
         progress: bool, samples_dir: str | None = None):
    """One Ray Train run of ``stage`` (sft | dpo) with a progress bar; returns its result."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    from pbt_ray.training.worker import train_loop_per_worker

    tcfg = cfg.train
    queue = Queue(actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": tcfg.model_dump(mode="json"), "model_path": model_path, "stage": stage,
                           "tracker_run_name": tracker_run_name(cfg, stage, run_name),
                           "files": ship_files(files), "progress": queue, "samples_dir": samples_dir,
                           "reader": dev_reader(cfg, log)},
        scaling_config=ScalingConfig(num_workers=tcfg.workers(stage), use_gpu=tcfg.use_gpu,
                                     resources_per_worker=worker_resources(tcfg),
                                     accelerator_type=tcfg.accelerator_type),
        torch_config=TorchConfig(backend="nccl" if tcfg.use_gpu else "gloo"),
        run_config=RunConfig(name=run_name, storage_path=storage,
                             checkpoint_config=CheckpointConfig(num_to_keep=tcfg.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=tcfg.max_failures)),
    )
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - reported on the driver thread below
            outcome["error"] = exc

    thread = threading.Thread(target=fit, name=f"pbt-train-{stage}", daemon=True)
    thread.start()
    from pbt_ray import tracking

    writer = tensorboard_writer(cfg, run_name, log) if tcfg.tensorboard else None
    trackers = tracking.active()
    trackers = trackers.child(tracker_run_name(cfg, stage, run_name), cfg) if trackers else None
    try:
        _show_progress(thread, queue, log, progress, writer, trackers)
    finally:
        if writer is not None:
            writer.close()
    thread.join()
    if trackers is not None:
        trackers.close(ok="error" not in outcome)
    with contextlib.suppress(Exception):
        ray.kill(queue.actor)
    if "error" in outcome:
        raise TrainError(f"{stage} failed: {outcome['error']}") from outcome["error"]
    result = outcome["result"]
    if result.checkpoint is None:
        raise TrainError(f"{stage} finished without a checkpoint; see the worker logs")
    return result


def tracker_run_name(cfg: PBTConfig, stage: str, run_name: str) -> str:
    """The experiment trackers' name of a training run: ``<pbt run>/<stage>/<Ray Train run>``; an experiment cell's
    config is named after the cell (condition and seed)."""
    return f"{cfg.name}/{stage}/{run_name}"


def tensorboard_dir(cfg: PBTConfig, run_name: str) -> Path:
    return cfg.run_dir / "tensorboard" / run_name


def tensorboard_writer(cfg: PBTConfig, run_name: str, log=print):
    """A TensorBoard writer into the run directory (tensorboardX, which comes with ray[train]); None if it is
    missing. A resumed run writes on into the same directory: TensorBoard shows the latest value of a step."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        log("[pbt] note: tensorboardX is not installed, so no TensorBoard events are written (pip install tensorboardX)")
        return None
    return SummaryWriter(logdir=str(tensorboard_dir(cfg, run_name)), flush_secs=10)


def _show_progress(thread: threading.Thread, queue, log, progress: bool, writer=None, trackers=None) -> None:
    from tqdm.auto import tqdm

    from pbt_ray import tracking

    bar = None
    shown = {"loss", "rewards/accuracies", "rewards/margins", "eval_loss", "eval_rewards/accuracies", "learning_rate"}
    while thread.is_alive() or not queue.empty():
        try:
            item = queue.get(timeout=1.0)
        except Exception:  # noqa: BLE001 - Empty, or the queue actor is gone after fit
            continue
        scalars = {f"{item.get('stage', 'train')}/{key}": value for key, value in item.items()
                   if key not in ("step", "max_steps", "stage") and isinstance(value, (int, float))}
        if writer is not None:  # e.g. dpo/loss, dpo/rewards/margins, dpo/eval_loss at the optimizer step
            for key, value in scalars.items():
                writer.add_scalar(key, value, item.get("step", 0))
        if trackers is not None:  # MLflow / W&B: the training run's own tracker run
            trackers.log_metrics(tracking.numeric_leaves(scalars), item.get("step", 0))
        if progress and bar is None and item.get("max_steps"):
            bar = tqdm(total=item["max_steps"], desc=f"training ({item['stage']})", unit="step")
        if bar is not None:
            bar.update(max(0, item["step"] - bar.n))
            bar.set_postfix({k.replace("rewards/", ""): f"{v:.3g}" for k, v in item.items() if k in shown})
        else:
            log("[pbt] " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in item.items()))
    if bar is not None:
        bar.close()


def export(checkpoint, cfg: PBTConfig, metrics: dict[str, Any], log=print, base_model: str | None = None) -> dict[str, Any]:
    """Copy the adapter (and its tokenizer files) out of the final checkpoint; optionally merge it."""
    out = cfg.run_dir / "adapter"
    with checkpoint.as_directory() as directory:
        source = Path(directory)
        if not any((source / name).is_file() for name in ADAPTER_FILES):
            raise TrainError(f"the final checkpoint {checkpoint.path} holds no adapter files")
        tmp = out.with_name(".adapter.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("global_step*", "*.pt", "*.pth", "zero_to_fp32.py"))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    (cfg.run_dir / "train_metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    log(f"[pbt] adapter in {out}; metrics in {cfg.run_dir / 'train_metrics.json'}")
    result = {"adapter": str(out), "base_model": base_model or resolve_model_path(cfg.train.base_model)}
    (out / "pbt_base_model.txt").write_text(result["base_model"] + "\n")  # what the adapter applies to (SFT-merged or base)
    if cfg.train.merge:
        base = base_model or resolve_model_path(cfg.train.base_model)
        result["merged"] = str(merge_adapter(base, out, cfg.run_dir / "merged", log=log))
        log(f"[pbt] merged model in {result['merged']}")
    return result


def merge_adapter(base: str, adapter: Path, out: Path, log=None) -> Path:
    """The adapter merged into ``base``, saved to ``out``; each step logged with its time (a 70B base takes
    minutes to load and to save)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()

    def step(what: str) -> None:
        if log is not None:
            log(f"[pbt] merge: {what} ({time.monotonic() - started:.0f} s)")

    step(f"loading the base {base}")
    model = AutoModelForCausalLM.from_pretrained(base)
    step("loaded; applying and merging the adapter")
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    step(f"merged; saving to {out}")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    step("saved")
    return out


__all__ = ["TrainDataError", "TrainError", "check_resources", "prepare", "train", "workers_that_fit"]
