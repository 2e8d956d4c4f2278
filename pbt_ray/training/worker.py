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


def score_replies(rows: list[dict], replies: list[str], reader: dict | None) -> list[bool]:
    """Whether each dev reply gives a gold answer, read by the project's one answer instrument and resolved
    by its one rule: Agree takes the persuader's answer, Disagree keeps the persuadee's answer before the
    persuasion turn (PBT_SPEC.md §4.5 with the extractor, as the evaluations read the same replies).

    ``reader`` is ``{"mode": extract.mode, "transport": how to reach the extractor}``; without a transport
    (no debater app running, e.g. a bare `pbt train`) the deterministic reader alone reads (mode ``rules``)."""
    import asyncio

    from pbt_ray.answers import is_correct, resolve
    from pbt_ray.dialogue.extraction import Extractor

    reader = reader or {}
    transport = reader.get("transport")
    client = None
    if transport:
        from pbt_ray.dialogue.pipeline import make_client

        client = make_client(transport, 300.0)
    extractor = Extractor(client, "extractor", reader.get("mode", "auto") if client else "rules")
    readings = asyncio.run(extractor.read_many([(row.get("question") or "", reply, row.get("choices"))
                                                for row, reply in zip(rows, replies)]))
    return [is_correct(resolve(reading.outcome, reading.answer, own_previous=row.get("persuadee_before"),
                               partner_latest=row.get("persuader_answer"), choices=row.get("choices")),
                       row["gold"], row.get("choices"))
            for row, reading in zip(rows, readings)]


def persuasion_accuracy(model, tokenizer, rows: list[dict], *, synced: bool, max_new_tokens: int = 48,
                        batch_size: int = 8, reader: dict | None = None) -> dict[str, float]:
    """PBT_SPEC.md §4.5 on the dev split: the policy answers each persuasion prompt (greedy), and the reply
    is read and scored as every stage reads answers (:func:`score_replies`); accuracy on resist and accept
    items and their mean (balanced).
    Every rank takes an equal share (padded), so ZeRO-3's synchronized generation never waits on a rank."""
    import torch
    import torch.distributed as dist

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    share = -(-len(rows) // world) if rows else 0
    mine = [(rows[i], True) if i < len(rows) else (rows[0], False) for i in range(rank * share, (rank + 1) * share)]
    counts = torch.zeros(4, dtype=torch.float64)  # resist right, resist n, accept right, accept n
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    model_was_training = model.training
    model.eval()
    scored: list[tuple[dict, str]] = []  # every counted reply, read in one go after generation
    try:
        for start in range(0, len(mine), batch_size):
            chunk = mine[start:start + batch_size]
            texts = [tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False) for r, _ in chunk]
            inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, synced_gpus=synced,
                                     pad_token_id=tokenizer.pad_token_id)
            replies = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            scored += [(row, reply) for (row, counted), reply in zip(chunk, replies)
                       if counted and row["type"] in ("resist", "accept")]
    finally:
        tokenizer.padding_side = side
        model.train(model_was_training)
    rights = score_replies([r for r, _ in scored], [x for _, x in scored], reader) if scored else []
    for (row, _), right in zip(scored, rights):
        slot = 0 if row["type"] == "resist" else 2
        counts[slot] += right
        counts[slot + 1] += 1
    if dist.is_initialized():
        dist.all_reduce(counts)
    resist = (counts[0] / counts[1]).item() if counts[1] else float("nan")
    accept = (counts[2] / counts[3]).item() if counts[3] else float("nan")
    parts = [x for x in (resist, accept) if x == x]
    return {"eval_resist_accuracy": resist, "eval_accept_accuracy": accept,
            "eval_balanced_accuracy": sum(parts) / len(parts) if parts else float("nan")}


def _with_persuasion_eval(trainer_cls, rows: list[dict], synced: bool, reader: dict | None = None,
                          keep_best: bool = False):
    class PersuasionEvalTrainer(trainer_cls):
        """TRL's DPO evaluation, then the generation-based balanced accuracy logged with it. With ``keep_best``
        the adapter of the best balanced accuracy so far is saved aside (PBT_SPEC.md §4.4: the paper exports the
        best checkpoint by this metric), and the worker exports it instead of the last."""

        best: dict[str, Any] | None = None

        def evaluate(self, *args, **kwargs):
            metrics = super().evaluate(*args, **kwargs)
            model = self.accelerator.unwrap_model(self.model)
            extra = persuasion_accuracy(model, self.processing_class, rows, synced=synced, reader=reader)
            self.log(extra)
            metrics.update(extra)
            score = extra["eval_balanced_accuracy"]
            # Every rank sees the same all-reduced score, so all take the same branch: under ZeRO-3 saving
            # gathers the adapter's shards collectively.
            if keep_best and score == score and (self.best is None or score > self.best["eval_balanced_accuracy"]):
                directory = (self.best or {}).get("dir") or tempfile.mkdtemp(prefix="pbt-best-")
                self.save_model(directory)
                self.best = {"dir": directory, "step": self.state.global_step, "eval_balanced_accuracy": score}
            return metrics

    return PersuasionEvalTrainer


def select_adapter(final: Path, best: dict[str, Any] | None, select: str) -> dict[str, Any]:
    """Put the selected adapter in ``final`` (which holds the last one): the best by dev balanced accuracy
    when ``select`` asks for it and an evaluation scored one, else the last. Returns what was selected."""
    import shutil

    if select != "best_dev_balanced" or best is None:
        why = "train.select is last" if select == "last" else "no dev evaluation scored a balanced accuracy"
        return {"selected": "last", "why": why}
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        if (Path(best["dir"]) / name).is_file():
            shutil.copy2(Path(best["dir"]) / name, final / name)
    return {"selected": "best_dev_balanced", "selected_step": best["step"],
            "selected_eval_balanced_accuracy": best["eval_balanced_accuracy"]}


def _dev_rows(path: str, limit: int) -> list[dict]:
    import pyarrow.parquet as pq

    columns = ["prompt", "gold", "type", "choices", "question", "persuadee_before", "persuader_answer"]
    rows = pq.read_table(path, columns=columns).slice(0, limit).to_pylist()
    for row in rows:
        row["choices"] = {c["label"]: c["text"] for c in row["choices"]} if row.get("choices") else None
    return rows


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


def local_files(files: dict[str, Any]) -> dict[str, str]:
    """Paths of the pairs files on this node: shipped bytes ({"name", "data"}) are written to a temp dir once."""
    out: dict[str, str] = {}
    directory = None
    for split, item in files.items():
        if isinstance(item, str):
            out[split] = item
            continue
        directory = directory or Path(tempfile.mkdtemp(prefix="pbt-pairs-"))
        target = directory / f"{split}-{item['name']}"
        target.write_bytes(item["data"])
        out[split] = str(target)
    return out


def build_dpo_trainer(config: dict[str, Any], rank: int, callbacks: list, *, save: bool = True):
    """TRL's DPOTrainer (``config["stage"] == "sft"``: SFTTrainer) on a LoRA adapter with the DeepSpeed config,
    Ray-free: the Ray worker below and the torchrun side of `pbt bench train` build the very same trainer."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from pbt_ray.config import TrainConfig
    from pbt_ray.training.data import load_pairs

    tcfg = TrainConfig(**config["train"])
    config = {**config, "files": local_files(config["files"])}
    bf16 = use_bf16(tcfg.precision, tcfg.use_gpu)
    torch.manual_seed(tcfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(config["model_path"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    sft = config.get("stage") == "sft"
    if sft:  # prompt-completion records of the chosen replies; loss on the completion only
        from datasets import load_dataset

        train_data = load_dataset("parquet", data_files={"split": config["files"]["train"]}, split="split")
        train_data = train_data.select_columns(["prompt", "completion"])
        dev_data = None
    else:
        train_data = load_pairs(config["files"]["train"])
        dev_data = load_pairs(config["files"]["dev"], tcfg.dev_limit, dev=True) if config["files"].get("dev") else None
    evaluate = dev_data is not None and len(dev_data) > 0
    common = dict(
        output_dir=tempfile.mkdtemp(prefix=f"pbt-train-rank{rank}-"), seed=tcfg.seed, data_seed=tcfg.seed,
        per_device_train_batch_size=tcfg.sft_per_device_batch_size if sft else tcfg.per_device_batch_size,
        gradient_accumulation_steps=tcfg.accumulation("sft" if sft else "dpo"),
        per_device_eval_batch_size=tcfg.eval_batch_size,
        learning_rate=tcfg.learning_rate, lr_scheduler_type=tcfg.lr_scheduler, warmup_steps=tcfg.warmup_steps,
        max_length=tcfg.max_length, bf16=bf16, use_cpu=not tcfg.use_gpu,
        gradient_checkpointing=tcfg.gradient_checkpointing,
        deepspeed=deepspeed_config(tcfg.zero_stage, tcfg.offload_optimizer, tcfg.offload_params),
        save_strategy="steps" if save else "no", save_steps=tcfg.checkpoint_every, save_total_limit=tcfg.keep_checkpoints,
        logging_steps=tcfg.logging_steps, report_to="none", disable_tqdm=True,
        ddp_find_unused_parameters=False,
        # Trackers are fed by the driver from rank 0's log lines (pbt_ray.tracking, TensorBoard in launch), so
        # metrics leave the workers wherever they run and workers need no tracker credentials; the run name is the
        # one the driver's tracker runs carry: <pbt run>/<stage>/<Ray Train run>, not the worker's temp dir.
        run_name=config.get("tracker_run_name"),
    )
    if sft:
        args = SFTConfig(**common, max_steps=tcfg.sft_max_steps, completion_only_loss=True)
    else:
        args = DPOConfig(
            **common, num_train_epochs=tcfg.epochs, max_steps=tcfg.max_steps,
            beta=tcfg.beta, loss_type=[tcfg.loss_type], precompute_ref_log_probs=tcfg.reference == "precomputed",
            eval_strategy=("steps" if tcfg.eval_steps else "epoch") if evaluate else "no", eval_steps=tcfg.eval_steps,
            remove_unused_columns=False,
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
    if sft:
        return SFTTrainer(model=model, args=args, train_dataset=train_data, processing_class=tokenizer,
                          peft_config=peft_config, callbacks=callbacks)
    trainer_cls = DPOTrainer
    if evaluate and tcfg.generation_eval:
        trainer_cls = _with_persuasion_eval(DPOTrainer, _dev_rows(config["files"]["dev"], tcfg.dev_limit),
                                            synced=tcfg.zero_stage == 3, reader=config.get("reader"),
                                            keep_best=tcfg.select == "best_dev_balanced")
    trainer = trainer_cls(model=model, ref_model=None, args=args, train_dataset=train_data,
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
    callbacks = [RayTrainReportCallback(), _progress_callback(config.get("progress"), rank, config.get("stage", "dpo")),
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
    if config.get("stage", "dpo") == "dpo":
        from pbt_ray.config import TrainConfig

        chosen = select_adapter(final, getattr(trainer, "best", None), TrainConfig(**config["train"]).select)
        metrics.update({k: v for k, v in chosen.items() if k != "why"})
        metrics["selected_why"] = chosen.get("why", "")
    if rank == 0:
        (final / "train_log.json").write_text(json.dumps(trainer.state.log_history, indent=2) + "\n")
        (final / FINAL_MARKER).write_text(json.dumps({"metrics": metrics}) + "\n")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(final)))
    else:
        ray.train.report(metrics, checkpoint=None)
