"""`pbt bench train`: the same TRL + DeepSpeed DPO run under Ray Train and under torchrun, side by side.

Both sides build their trainer with :func:`pbt_ray.training.worker.build_dpo_trainer` from one config (same
model, data, seed, ZeRO stage, batch), on the same machine, one after the other. Each rank times every
optimizer step and counts the tokens its micro-batches carried; the first ``warmup`` steps are dropped, so
the comparison is steady state (process start, model load and DeepSpeed init are excluded on both sides).
Ray's overhead = (median step time under Ray / median step time under torchrun) - 1; the target is <= 5 %.

Run the torchrun side by hand with::

    torchrun --nproc_per_node 2 -m pbt_ray.training.bench CONFIG.json OUT_DIR
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pbt_ray.config import PBTConfig


def _step_timer(out_dir: str, rank: int, collator_ref: dict):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Step i = from the end of step i-1 to the end of step i: data loading included, and the tokens the
        collator produced in between (transformers fetches a step's batches before ``on_step_begin``)."""

        def __init__(self):
            self.steps: list[dict[str, float]] = []
            self.last = 0.0
            self.tokens_before = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now, tokens = time.perf_counter(), collator_ref["collator"].tokens
            self.steps.append({"seconds": now - self.last, "tokens": tokens - self.tokens_before})
            self.last, self.tokens_before = now, tokens

        def on_train_end(self, args, state, control, **kwargs):
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / f"rank-{rank}.json").write_text(json.dumps(self.steps))

    return StepTimer()


def _run_timed(config: dict[str, Any], rank: int, out_dir: str, prepare=None) -> None:
    from pbt_ray.training.worker import build_dpo_trainer

    ref: dict[str, Any] = {}
    timer = _step_timer(out_dir, rank, ref)
    trainer = build_dpo_trainer(config, rank, [timer], save=False)
    ref["collator"] = trainer.data_collator
    if prepare is not None:
        trainer = prepare(trainer)
    trainer.train()


def ray_bench_loop(config: dict[str, Any]) -> None:
    import ray.train
    from ray.train.huggingface.transformers import prepare_trainer

    rank = ray.train.get_context().get_world_rank()
    _run_timed(config, rank, config["out_dir"], prepare=prepare_trainer)
    ray.train.report({"done": 1})


def _summary(out_dirs: list[Path], world: int, warmup: int, pairs_per_step: int) -> dict[str, float]:
    """Steady-state numbers over the measured steps of one or more runs of one side."""
    seconds, tokens = [], []
    for out_dir in out_dirs:
        ranks = [json.loads((out_dir / f"rank-{r}.json").read_text()) for r in range(world)]
        steps = min(len(r) for r in ranks)
        if steps <= warmup:
            raise RuntimeError(f"only {steps} steps recorded in {out_dir}; run more steps than the {warmup} warm-up steps")
        # A step ends when the slowest rank finishes it (the all-reduce waits for it).
        seconds += [max(r[i]["seconds"] for r in ranks) for i in range(warmup, steps)]
        tokens += [sum(r[i]["tokens"] for r in ranks) for i in range(warmup, steps)]
    median = statistics.median(seconds)
    return {"steps_measured": len(seconds), "median_step_s": median, "mean_step_s": statistics.fmean(seconds),
            "samples_per_s": pairs_per_step / median, "tokens_per_s": sum(tokens) / sum(seconds)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_train_bench(cfg: PBTConfig, pairs: str | None, steps: int = 12, warmup: int = 3, rounds: int = 2,
                    log=print) -> dict[str, Any]:
    """Must run inside ``ray_cluster``; torchrun and Ray Train with identical configs, ``rounds`` times each."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pbt_ray.resources import cluster_nodes
    from pbt_ray.training.launch import check_resources, prepare, worker_resources

    tcfg = cfg.train.model_copy(update={"max_steps": steps, "logging_steps": steps, "warmup_steps": 0})
    cfg = cfg.model_copy(update={"train": tcfg})
    plan = prepare(cfg, pairs, log=log)
    check_resources(tcfg, cluster_nodes(available=True), busy=True)
    world = tcfg.num_workers
    pairs_per_step = tcfg.per_device_batch_size * tcfg.accumulation() * world
    base = {"train": tcfg.model_dump(mode="json"), "model_path": plan["model_path"],
            "files": {"train": plan["files"]["train"]}}
    work = Path(tempfile.mkdtemp(prefix="pbt-bench-train-"))
    results: dict[str, Any] = {"config": {"workers": world, "zero_stage": tcfg.zero_stage, "steps": steps, "rounds": rounds,
                                          "warmup": warmup, "pairs_per_step": pairs_per_step,
                                          "model": plan["model"]["model_type"], "parameters": plan["model"]["parameters"],
                                          "use_gpu": tcfg.use_gpu}}

    (work / "config.json").write_text(json.dumps(base))
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, int(tcfg.cpus_per_worker)))}  # what Ray gives each worker

    def torchrun(out: Path) -> None:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}",
                   "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "pbt_ray.training.bench",
                   str(work / "config.json"), str(out)]
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun side failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")

    def ray_train(out: Path) -> None:
        TorchTrainer(ray_bench_loop, train_loop_config={**base, "out_dir": str(out)},
                     scaling_config=ScalingConfig(num_workers=world, use_gpu=tcfg.use_gpu,
                                                  resources_per_worker=worker_resources(tcfg)),
                     torch_config=TorchConfig(backend="nccl" if tcfg.use_gpu else "gloo"),
                     run_config=RunConfig(name=out.name, storage_path=str(work / "storage"))).fit()

    # Rounds alternate the order (torchrun first, then Ray first, ...) so drift on a shared machine hits both.
    sides = {"torchrun": torchrun, "ray": ray_train}
    dirs: dict[str, list[Path]] = {"torchrun": [], "ray": []}
    for round_ in range(rounds):
        for side in (("torchrun", "ray") if round_ % 2 == 0 else ("ray", "torchrun")):
            out = work / f"{side}-{round_}"
            log(f"[pbt] bench train round {round_ + 1}/{rounds}: {side}, {world} workers, {steps} steps")
            started = time.monotonic()
            sides[side](out)
            dirs[side].append(out)
            results.setdefault("rounds", []).append({"side": side, "round": round_, "wall_s": time.monotonic() - started,
                                                     **_summary([out], world, warmup, pairs_per_step)})
    for side in sides:
        results[side] = _summary(dirs[side], world, warmup, pairs_per_step)
    overhead = results["ray"]["median_step_s"] / results["torchrun"]["median_step_s"] - 1
    results["ray_overhead"] = overhead
    log(format_bench(results))
    return results


def format_bench(r: dict[str, Any]) -> str:
    c = r["config"]
    lines = [f"DPO steady state, {c['model']} ({c['parameters'] / 1e6:.0f}M), {c['workers']} workers, ZeRO-{c['zero_stage']}, "
             f"{c['pairs_per_step']} pairs/step, {c['rounds']} round(s) x {c['steps']} steps per side "
             f"({c['warmup']} warm-up steps dropped per run)",
             f"{'':18} {'step s (median)':>16} {'pairs/s':>9} {'tokens/s':>10}"]
    for run in r.get("rounds", []):
        lines.append(f"{run['side'] + ' #' + str(run['round'] + 1):18} {run['median_step_s']:>16.3f} "
                     f"{run['samples_per_s']:>9.2f} {run['tokens_per_s']:>10.0f}")
    for side in ("torchrun", "ray"):
        s = r[side]
        lines.append(f"{side + ' (all)':18} {s['median_step_s']:>16.3f} {s['samples_per_s']:>9.2f} {s['tokens_per_s']:>10.0f}")
    lines.append(f"Ray overhead in steady state: {100 * r['ray_overhead']:+.1f} % (target <= 5 %)")
    return "\n".join(lines)


def _torchrun_main(config_path: str, out_dir: str) -> None:
    rank = int(os.environ.get("RANK", "0"))
    _run_timed(json.loads(Path(config_path).read_text()), rank, out_dir)


if __name__ == "__main__":
    _torchrun_main(sys.argv[1], sys.argv[2])
