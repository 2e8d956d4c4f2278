"""DPO for real: Ray Train workers running TRL + PEFT LoRA + DeepSpeed ZeRO on the embedded model (CPU)."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pbt_ray.config import load_config
from pbt_ray.preferences.mining import mine
from pbt_ray.runtime import ray_cluster
from pbt_ray.training.launch import train
from tests.unit.pbt_fixtures import random_tree, write_ours

pytestmark = pytest.mark.integration

STEPS = 6
BASE = ["train.max_steps=6", "train.checkpoint_every=2", "train.per_device_batch_size=2", "train.max_failures=0",
        "train.logging_steps=1", "train.warmup_steps=0"]


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory) -> Path:
    """Balanced pairs mined from generated trees (the local preset's own trees rarely yield any)."""
    root = tmp_path_factory.mktemp("pairs")
    (root / "trees").mkdir()
    write_ours(root / "trees" / "part-0.parquet", [random_tree(random.Random(s), s) for s in range(60)])
    cfg = load_config("local", ["mine.split_fractions=[0.85,0.15,0.0]", "mine.balance=balanced"])
    stats = mine(cfg, trees=str(root), out=str(root / "prefs"), use_ray=False, log=lambda *_: None)
    assert stats["selected"]["train"]["resist"] >= 8
    return root / "prefs"


def read_segments(path: Path) -> list[dict]:
    """The recorded micro-batches of one worker, split at each (re)start: [{"from": step, "train": [...]}]."""
    segments = []
    for line in path.read_text().splitlines():
        item = json.loads(line)
        if item.get("start"):
            segments.append({"from": item["resumed_from_step"], "train": []})
        elif item["split"] == "train":
            segments[-1]["train"].append(item["rows"])
    return segments


@pytest.fixture(scope="module")
def zero2_run(pairs_dir, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    # MLflow and W&B too (issue 17): a local sqlite store in the run directory, W&B offline (no API key here).
    cfg = load_config("local", [f"runs_dir={runs}", "name=zero2", *BASE, "train.loggers=[mlflow,wandb]"])
    with ray_cluster(cfg):
        metrics = train(cfg, str(pairs_dir), progress=False, record_samples=True, log=lambda *_: None)
    return cfg, metrics


def test_zero2_two_workers_lora_adapter_changes_the_model(zero2_run, pairs_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pbt_ray.training.data import resolve_model_path

    cfg, metrics = zero2_run
    assert metrics["global_step"] == STEPS and metrics["world_size"] == 2
    log = json.loads((cfg.run_dir / "adapter" / "train_log.json").read_text())
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert len(losses) == STEPS and all(math.isfinite(x) and x > 0 for x in losses)
    assert json.loads((cfg.run_dir / "train_metrics.json").read_text())["global_step"] == STEPS
    # The dev split was evaluated: TRL's DPO metrics and the generation-based balanced accuracy (§4.5).
    assert "eval_rewards/accuracies" in metrics and 0.0 <= metrics["eval_balanced_accuracy"] <= 1.0
    # TensorBoard events in the run directory (issue 17), written by the driver: the same losses at each step.
    from tests.unit.test_tensorboard import read_scalars

    scalars = read_scalars(cfg.run_dir / "tensorboard" / metrics["run_name"])
    assert [step for step, _ in scalars["dpo/loss"]] == list(range(1, STEPS + 1))
    assert [value for _, value in scalars["dpo/loss"]] == pytest.approx(losses, rel=1e-5)
    assert "dpo/eval_balanced_accuracy" in scalars
    # The same run in MLflow, read back through MLflow's client: the pbt run, and the training run as its child.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{cfg.run_dir / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("pbt-ray").experiment_id])
    child = next(r for r in runs if r.info.run_name == f"zero2/dpo/{metrics['run_name']}")
    parent = next(r for r in runs if r.info.run_name == "zero2")
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    history = client.get_metric_history(child.info.run_id, "dpo/loss")
    assert [m.step for m in history] == list(range(1, STEPS + 1))
    assert [m.value for m in history] == pytest.approx(losses, rel=1e-5)
    assert parent.data.metrics["train/global_step"] == STEPS
    # W&B's offline run files: the pbt run and its training run, holding the loss series' key.
    offline = sorted((cfg.run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 2 and any(b"dpo/loss" in path.read_bytes() for path in offline)

    base_dir = resolve_model_path("embedded")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "Who wrote Paradise Lost?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    with torch.no_grad():
        before = base(**inputs).logits
    tuned = PeftModel.from_pretrained(base, str(cfg.run_dir / "adapter"))
    config = json.loads((cfg.run_dir / "adapter" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["k_proj", "q_proj", "v_proj"] and config["r"] == 16
    with torch.no_grad():
        after = tuned(**inputs).logits
    assert (after - before).abs().max().item() > 1e-4  # the trained adapter changes the model's outputs


def test_zero3_sft_then_dpo_exports_whole_adapters(pairs_dir, tmp_path):
    """ZeRO-3 (weights partitioned while loading), with the optional SFT stage merged before DPO."""
    from safetensors.torch import load_file

    cfg = load_config("local", [f"runs_dir={tmp_path}", "name=zero3", "train.zero_stage=3", *BASE,
                                "train.max_steps=2", "train.sft=true", "train.sft_max_steps=2"])
    with ray_cluster(cfg):
        metrics = train(cfg, str(pairs_dir), progress=False, log=lambda *_: None)
    assert metrics["global_step"] == 2 and math.isfinite(metrics["train_loss"])
    weights = load_file(str(cfg.run_dir / "adapter" / "adapter_model.safetensors"))
    assert weights and all(t.numel() > 0 for t in weights.values())  # gathered from the ZeRO-3 shards
    merged = cfg.run_dir / "sft-merged"
    assert (merged / "pbt_sft.json").is_file() and (merged / "model.safetensors").is_file()
    assert metrics["base_model"] == str(merged)  # DPO trained its adapter on the SFT model


def test_killed_run_resumes_at_its_checkpoint_with_the_same_data_order(zero2_run, pairs_dir, tmp_path):
    reference_cfg, _ = zero2_run
    reference = [read_segments(reference_cfg.run_dir / "train" / "samples" / f"rank-{r}.jsonl") for r in (0, 1)]
    assert all(len(segs) == 1 and len(segs[0]["train"]) >= STEPS for segs in reference)

    overrides = [f"runs_dir={tmp_path}", "name=killed", *BASE]
    cfg = load_config("local", overrides)
    command = [sys.executable, "-m", "pbt_ray", "train", "-c", "local", "--pairs", str(pairs_dir), "--record-samples",
               *overrides]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    storage = cfg.run_dir / "checkpoints"  # the run is <train.run_name>-<fingerprint>
    try:
        deadline = time.monotonic() + 600
        while not list(storage.glob("dpo-*/checkpoint_*/checkpoint/trainer_state.json")) and time.monotonic() < deadline:
            assert proc.poll() is None, "pbt train exited before its first checkpoint"
            time.sleep(0.5)
        time.sleep(1.0)  # let the checkpoint finish uploading
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, its in-process cluster and the workers, mid-run
        proc.wait(30)
    assert not (cfg.run_dir / "adapter").exists()

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert json.loads((cfg.run_dir / "train_metrics.json").read_text())["global_step"] == STEPS
    for rank in (0, 1):
        expected = reference[rank][0]["train"]
        killed, resumed = read_segments(cfg.run_dir / "train" / "samples" / f"rank-{rank}.jsonl")
        assert killed["from"] == 0 and killed["train"] == expected[: len(killed["train"])]
        step = resumed["from"]
        assert 2 <= step < STEPS and step % 2 == 0  # resumed from a checkpoint, not from scratch
        assert resumed["train"] == expected[step:]  # the same batches, continuing where the checkpoint left off


def test_a_killed_train_worker_is_restarted_from_the_checkpoint_by_the_same_driver(zero2_run, pairs_dir, tmp_path):
    """Issue 16.2: with the driver alive, one Ray Train worker SIGKILLed mid-DPO (train.max_failures=1): Ray Train
    restarts the worker group from the latest checkpoint, and the same `pbt train` finishes with the same final
    step and the same data order as an uninterrupted run; the samples log shows the resumed segment."""
    import psutil

    reference_cfg, _ = zero2_run
    reference = [read_segments(reference_cfg.run_dir / "train" / "samples" / f"rank-{r}.jsonl") for r in (0, 1)]
    overrides = [f"runs_dir={tmp_path}", "name=worker-killed", *BASE, "train.max_failures=1"]
    cfg = load_config("local", overrides)
    command = [sys.executable, "-m", "pbt_ray", "train", "-c", "local", "--pairs", str(pairs_dir), "--record-samples",
               *overrides]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    storage = cfg.run_dir / "checkpoints"
    try:
        # Kill once the second checkpoint is on storage: Ray Train registers a checkpoint after every worker has
        # reported it, so the first one is surely registered by then (a kill right after the first upload may
        # land before its registration, and the group then rightly restarts from step 0).
        deadline = time.monotonic() + 600
        while len(list(storage.glob("dpo-*/checkpoint_*/checkpoint/trainer_state.json"))) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, "pbt train exited before its second checkpoint"
            time.sleep(0.5)
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.name().startswith("ray::RayTrainWorker")]
        assert len(workers) == 2, [p.name() for p in workers]
        os.kill(workers[-1].pid, signal.SIGKILL)  # one worker; the driver and the cluster live on
        output, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    assert proc.returncode == 0, output[-4000:]
    assert json.loads((cfg.run_dir / "train_metrics.json").read_text())["global_step"] == STEPS
    assert (cfg.run_dir / "adapter" / "adapter_config.json").is_file()
    for rank in (0, 1):
        expected = reference[rank][0]["train"]
        first, restarted = read_segments(cfg.run_dir / "train" / "samples" / f"rank-{rank}.jsonl")
        assert first["from"] == 0 and first["train"] == expected[: len(first["train"])]
        step = restarted["from"]
        assert 2 <= step < STEPS and step % 2 == 0, output[-3000:]  # from a checkpoint, not from scratch
        assert restarted["train"] == expected[step:]


def test_an_identical_rerun_resumes_and_a_forced_one_trains_from_step_0(zero2_run, pairs_dir):
    """Last in this file: it adds a run to zero2_run's samples, which the resume test reads as its reference.
    Issue 14.1: the run name carries the fingerprint of what is trained. The same pairs and settings find the
    finished run and export it again; `pbt run --from train` (attempt 1) or new settings start a new run at step 0
    (before, Ray Train restored the old run's final checkpoint and the old adapter was exported again)."""
    cfg, metrics = zero2_run
    with ray_cluster(cfg):
        again = train(cfg, str(pairs_dir), progress=False, log=lambda *_: None)
        assert again["run_name"] == metrics["run_name"] and again["global_step"] == STEPS
        forced = train(cfg, str(pairs_dir), progress=False, record_samples=True, log=lambda *_: None, attempt=1)
    assert forced["run_name"] != metrics["run_name"] and forced["global_step"] == STEPS
    for rank in (0, 1):
        segments = read_segments(cfg.run_dir / "train" / "samples" / f"rank-{rank}.jsonl")
        assert segments[-1]["from"] == 0 and len(segments[-1]["train"]) >= STEPS  # a new run, from the start
    from pbt_ray.training.launch import training_run_name

    files = {"train": str(pairs_dir / "pairs" / "train.parquet"), "dev": str(pairs_dir / "pairs" / "dev.parquet")}
    edited = load_config("local", [f"runs_dir={cfg.runs_dir}", "name=zero2", *BASE, "train.beta=0.2"])
    assert training_run_name(edited, files, "m") != training_run_name(cfg, files, "m")
