"""Will each served model fit its GPUs? Pure arithmetic, checked before Serve asks for a replica.

A vLLM replica with tensor parallel ``tp`` holds, per GPU, 1/tp of the weights plus its KV cache, inside
``gpu_memory_utilization`` of the GPU, after vLLM's own activation and CUDA-graph workspace. The engine refuses
to start (after minutes of loading) when the KV cache left cannot hold one sequence of ``max_model_len``
tokens; a 70B model with tp 1 does not even load its weights (141 GB in bf16 on an 80 GB GPU). This module
says so up front, with the numbers and the smallest tensor parallel size that fits.
"""

from __future__ import annotations

from dataclasses import dataclass

from pbt_ray.config import PBTConfig, ServedModelConfig

GIB = 2**30
GPU_MEMORY_GIB = {"H100": 80.0, "H200": 141.0, "A100": 80.0, "L40S": 48.0, "A10G": 24.0, "L4": 24.0}
DEFAULT_GPU_GIB = 80.0
WORKSPACE_GIB = 4.0  # vLLM's profiled activation peak, CUDA graphs and the CUDA context, per GPU (measured 2-5 GiB)


class ServingMemoryError(ValueError):
    """A served model cannot fit its GPUs with the configured settings; the message says what would."""


@dataclass(frozen=True)
class ServingPlan:
    model_id: str
    source: str
    tensor_parallel: int
    gpu_gib: float
    usable_gib: float
    weights_gib: float
    workspace_gib: float
    kv_cache_gib: float
    kv_needed_gib: float  # one sequence of max_model_len tokens
    sequences: float  # max_model_len sequences the KV cache holds

    @property
    def fits(self) -> bool:
        return self.kv_cache_gib >= self.kv_needed_gib

    def describe(self) -> str:
        return (f"{self.model_id} ({self.source}), tensor parallel {self.tensor_parallel}: per GPU of "
                f"{self.gpu_gib:g} GiB, usable {self.usable_gib:.1f} = weights {self.weights_gib:.1f} + workspace "
                f"{self.workspace_gib:.1f} + KV cache {self.kv_cache_gib:.1f} GiB "
                f"({'holds ' + format(self.sequences, '.1f') + ' full-length sequences' if self.fits else 'needs ' + format(self.kv_needed_gib, '.2f') + ' GiB for one sequence'})"
                f": {'FITS' if self.fits else 'DOES NOT FIT'}")


def gpu_memory(model: ServedModelConfig) -> float:
    if model.gpu_memory_gib:
        return model.gpu_memory_gib
    return GPU_MEMORY_GIB.get((model.accelerator_type or "").upper(), DEFAULT_GPU_GIB)


def plan_model(model: ServedModelConfig, spec, tensor_parallel: int | None = None) -> ServingPlan:
    """The per-GPU budget of one replica of ``model`` (a :class:`pbt_ray.training.plan.ModelSpec` ``spec``)."""
    tp = tensor_parallel or model.tensor_parallel_size
    width = 4 if model.dtype == "float32" else 2  # auto serves these models' bf16 weights
    total = gpu_memory(model)
    usable = total * model.gpu_memory_utilization
    weights = spec.parameters * width / tp / GIB
    # K and V per layer per token; the KV heads are split over the tensor-parallel ranks (replicated below 1).
    kv_heads = max(1.0, spec.kv_heads / tp)
    per_token = 2 * spec.layers * kv_heads * spec.head_dim * width
    needed = per_token * model.max_model_len / GIB
    kv = usable - weights - WORKSPACE_GIB
    return ServingPlan(model.id, model.source, tp, total, usable, weights, WORKSPACE_GIB, kv, needed,
                       max(0.0, kv) / needed if needed else 0.0)


def smallest_tp(model: ServedModelConfig, spec) -> int | None:
    for tp in (1, 2, 4, 8, 16):
        if plan_model(model, spec, tp).fits:
            return tp
    return None


def spec_for(model: ServedModelConfig, fallback: str | None = None):
    """The model's shape from its source (a known hub id or a directory with config.json), else from
    ``fallback`` (a trained model not merged yet has its base's shape); None when unknown."""
    from pbt_ray.training.plan import model_spec

    for name in (model.source, fallback):
        if name:
            try:
                return model_spec(name)
            except (ValueError, OSError, KeyError):
                continue
    return None


def serving_plans(cfg: PBTConfig, with_trained: bool = True) -> list[tuple[ServedModelConfig, ServingPlan | None]]:
    """A plan per GPU model of the app, plus (``with_trained``) the trained model as it will be served: with
    its base's settings (:func:`pbt_ray.serving.trained.with_trained_model`). None: size unknown."""
    from pbt_ray.serving.trained import TRAINED_ID, with_trained_model

    models = list(cfg.serve.models)
    if with_trained and not any(m.id == TRAINED_ID for m in models):
        models.append(with_trained_model(cfg, cfg.run_dir / "merged").serve.model(TRAINED_ID))
    out = []
    for model in models:
        if model.accelerator != "gpu":
            continue
        fallback = cfg.train.base_model if model.id == TRAINED_ID else None
        spec = spec_for(model, fallback)
        out.append((model, plan_model(model, spec) if spec else None))
    return out


def check_serving_memory(cfg: PBTConfig, with_trained: bool = False) -> list[str]:
    """Raise :class:`ServingMemoryError` naming every GPU model that cannot fit, with the tensor parallel size
    that would; returns the plan lines (and the models whose size is unknown, unchecked)."""
    lines, refused = [], []
    for model, plan in serving_plans(cfg, with_trained):
        if plan is None:
            lines.append(f"{model.id} ({model.source}): size unknown, not checked")
            continue
        lines.append(plan.describe())
        if not plan.fits:
            spec = spec_for(model, cfg.train.base_model)
            tp = smallest_tp(model, spec)
            hint = (f"set tensor_parallel_size: {tp}" if tp else "no tensor parallel size up to 16 fits; lower "
                    "max_model_len or use larger GPUs")
            where = ("the trained model takes its base's settings: set them on " + cfg.base_served().id
                     if model.id == "pbt-trained" else f"serve.models[{[m.id for m in cfg.serve.models].index(model.id)}]")
            refused.append(f"{plan.describe()}; {hint} ({where})")
    if refused:
        raise ServingMemoryError("served models that cannot fit their GPUs:\n  " + "\n  ".join(refused))
    return lines
