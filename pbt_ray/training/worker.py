"""What each Ray Train worker runs: TRL DPO (after an optional SFT stage) on a PEFT LoRA adapter, with
DeepSpeed ZeRO, checkpoints reported to Ray Train and resumed from it.

The loop is plain TRL + transformers; Ray supplies the process group (gloo on CPU, NCCL on GPU), the
checkpoint storage and the restarts. A restarted worker group (``FailureConfig``) or a rerun with the same
run name and storage finds the latest checkpoint through ``ray.train.get_checkpoint()`` and resumes: same
optimizer step, same data order (transformers skips the batches already seen with the same seeded sampler).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

FINAL_MARKER = "pbt_final.json"  # in the last reported checkpoint: training finished, nothing to resume
SAMPLES_DIR = "samples"


def deepspeed_config(stage: int, offload_optimizer: bool = False, offload_params: bool = False) -> dict | None:
    """A ZeRO config whose "auto" values transformers fills from the training arguments (STACK.md §5)."""
    if stage == 0:
        return None
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": False, "contiguous_gradients": True}
    if stage == 3:
        # Gather the sharded weights when saving, so checkpoints and the exported adapter are whole.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        if offload_params:
            zero["offload_param"] = {"device": "cpu"}
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto", "gradient_clipping": "auto", "bf16": {"enabled": "auto"},
        "zero_optimization": zero,
    }
    if offload_optimizer:  # ZeRO-Offload steps with DeepSpeed's CPU Adam (JIT-built on first use)
        config["optimizer"] = {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                           "weight_decay": "auto"}}
    return config


def use_bf16(precision: str, use_gpu: bool) -> bool:
    return precision == "bf16" or (precision == "auto" and use_gpu)


class _RecordingCollator:
    """Delegates to TRL's collator and appends the pair rows of every micro-batch to a JSONL file, so a
    resumed run can be shown to continue the data order exactly."""

    def __init__(self, inner, path: Path | None):
        self.inner, self.path = inner, path
        self.tokens = 0  # prompt + chosen and prompt + rejected tokens of every micro-batch (for benchmarks)

    def __call__(self, examples: list[dict]) -> dict:
        from pbt_ray.training.data import SAMPLE_INDEX

        if self.path is not None:
            rows = [int(e[SAMPLE_INDEX]) for e in examples]
            split = "dev" if rows and rows[0] < 0 else "train"
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"split": split, "rows": [r if r >= 0 else -1 - r for r in rows]}) + "\n")
        self.tokens += sum(2 * len(e["prompt_ids"]) + len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in examples)
        keep = ("prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen_logps", "ref_rejected_logps")
        return self.inner([{k: v for k, v in e.items() if k in keep} for e in examples])


def _progress_callback(queue, rank: int, stage: str):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """Rank 0 sends every log line to the driver, which shows a progress bar with the metrics."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if rank == 0 and queue is not None and logs:
                queue.put({"stage": stage, "step": state.global_step, "max_steps": state.max_steps,
                           **{k: v for k, v in logs.items() if isinstance(v, (int, float))}})

    return Progress()


def _checkpoint_step(checkpoint) -> int:
    """The optimizer step a Ray Train checkpoint of the HF trainer was taken at (0: none)."""
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as directory:
        state = Path(directory) / "checkpoint" / "trainer_state.json"
        return json.loads(state.read_text())["global_step"] if state.is_file() else 0


def build_dpo_trainer(config: dict[str, Any], rank: int, callbacks: list, *, save: bool = True):
    """TRL's DPOTrainer on a LoRA adapter with the DeepSpeed config, Ray-free: the Ray worker below and
    the torchrun side of `pbt bench train` build the very same trainer."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from pbt_ray.config import TrainConfig
    from pbt_ray.training.data import load_pairs

    tcfg = TrainConfig(**config["train"])
    bf16 = use_bf16(tcfg.precision, tcfg.use_gpu)
    torch.manual_seed(tcfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(config["model_path"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_data = load_pairs(config["files"]["train"])
    dev_data = load_pairs(config["files"]["dev"], tcfg.dev_limit, dev=True) if config["files"].get("dev") else None
    evaluate = dev_data is not None and len(dev_data) > 0
    args = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix=f"pbt-train-rank{rank}-"), seed=tcfg.seed, data_seed=tcfg.seed,
        num_train_epochs=tcfg.epochs, max_steps=tcfg.max_steps,
        per_device_train_batch_size=tcfg.per_device_batch_size, gradient_accumulation_steps=tcfg.gradient_accumulation,
        per_device_eval_batch_size=tcfg.eval_batch_size,
        learning_rate=tcfg.learning_rate, lr_scheduler_type=tcfg.lr_scheduler, warmup_steps=tcfg.warmup_steps,
        beta=tcfg.beta, loss_type=[tcfg.loss_type], max_length=tcfg.max_length,
        precompute_ref_log_probs=tcfg.reference == "precomputed",
        bf16=bf16, use_cpu=not tcfg.use_gpu, gradient_checkpointing=tcfg.gradient_checkpointing,
        deepspeed=deepspeed_config(tcfg.zero_stage, tcfg.offload_optimizer, tcfg.offload_params),
        save_strategy="steps" if save else "no", save_steps=tcfg.checkpoint_every, save_total_limit=tcfg.keep_checkpoints,
        eval_strategy=("steps" if tcfg.eval_steps else "epoch") if evaluate else "no", eval_steps=tcfg.eval_steps,
        logging_steps=tcfg.logging_steps, report_to=list(tcfg.loggers) or "none", disable_tqdm=True,
        ddp_find_unused_parameters=False, remove_unused_columns=False,
    )
    # Loaded after the DeepSpeed config exists: under ZeRO-3 transformers then partitions the weights while
    # loading (zero.Init) instead of materializing the whole model in every worker's CPU memory. zero.Init
    # needs DeepSpeed's communication up (it wraps the process group Ray or torchrun created); transformers
    # only starts it later on CPU, and zero.Init would then see a world of 1 and reject the batch sizes.
    if tcfg.zero_stage == 3:
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if tcfg.use_gpu else "gloo")
    model = AutoModelForCausalLM.from_pretrained(config["model_path"], dtype=torch.bfloat16 if bf16 else torch.float32)
    peft_config = LoraConfig(r=tcfg.lora_r, lora_alpha=tcfg.lora_alpha, lora_dropout=tcfg.lora_dropout,
                             target_modules=list(tcfg.lora_targets), bias="none", task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=train_data,
                         eval_dataset=dev_data if evaluate else None, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=callbacks)
    samples = Path(config["samples_dir"]) / f"rank-{rank}.jsonl" if config.get("samples_dir") else None
    trainer.data_collator = _RecordingCollator(trainer.data_collator, samples)
    return trainer


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            if (Path(directory) / FINAL_MARKER).is_file():  # a finished run restarted: report it again, done
                ray.train.report(json.loads((Path(directory) / FINAL_MARKER).read_text())["metrics"],
                                 checkpoint=checkpoint if rank == 0 else None)
                return
    if config.get("samples_dir"):
        samples = Path(config["samples_dir"]) / f"rank-{rank}.jsonl"
        samples.parent.mkdir(parents=True, exist_ok=True)
        with open(samples, "a", encoding="utf-8") as handle:  # one segment per (re)start of the worker group
            handle.write(json.dumps({"start": True, "resumed_from_step": _checkpoint_step(checkpoint)}) + "\n")
    callbacks = [RayTrainReportCallback(), _progress_callback(config.get("progress"), rank, "dpo"),
                 *config.get("extra_callbacks", [])]
    trainer = prepare_trainer(build_dpo_trainer(config, rank, callbacks, save=config.get("save", True)))

    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume = Path(directory) / RayTrainReportCallback.CHECKPOINT_NAME
            trainer.train(resume_from_checkpoint=str(resume))
    else:
        trainer.train()

    final = Path(tempfile.mkdtemp(prefix=f"pbt-final-rank{rank}-"))
    trainer.save_model(str(final))  # on every rank: ZeRO-3 gathers the adapter's shards collectively
    metrics = {k: v for log in trainer.state.log_history for k, v in log.items() if isinstance(v, (int, float))}
    metrics.update({"global_step": trainer.state.global_step, "world_size": world})
    if rank == 0:
        (final / "train_log.json").write_text(json.dumps(trainer.state.log_history, indent=2) + "\n")
        (final / FINAL_MARKER).write_text(json.dumps({"metrics": metrics}) + "\n")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(final)))
    else:
        ray.train.report(metrics, checkpoint=None)
