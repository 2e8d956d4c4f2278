"""`pbt plan-train`: will this DPO run fit, and what is the cheapest setting that does? Pure arithmetic.

Per GPU: model states + activations + logits + a fixed runtime overhead. Model states use DeepSpeed's own
multipliers (``estimate_zero2/3_model_states_mem_needs``): 2 bytes per 16-bit parameter, 18 bytes per
*trained* parameter (16-bit grads, fp32 grads, fp32 master weights, two Adam moments). With LoRA only the
adapter is trained, so the 18 bytes apply to it alone and the frozen base costs 2 bytes per parameter
(partitioned over all GPUs under ZeRO-3, replicated otherwise). With full fine-tuning the formulas reduce
exactly to DeepSpeed's estimators, which the tests check. DPO runs chosen and rejected through the
policy, so activations and logits count 2 x micro-batch sequences; the reference pass (adapter disabled,
or precomputed) runs without gradients and stores nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

GIB = 2**30


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    tied_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer (Llama/Mistral naming)."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, self.intermediate), "up_proj": (h, self.intermediate),
                "down_proj": (self.intermediate, h)}

    @property
    def parameters(self) -> int:
        per_layer = sum(i * o for i, o in self.module_shapes().values()) + 2 * self.hidden
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * per_layer + embeddings + self.hidden

    @property
    def largest_layer(self) -> int:
        """Parameters of the largest single module (DeepSpeed's ``largest_layer_params``): the embedding."""
        return max(self.vocab * self.hidden, max(i * o for i, o in self.module_shapes().values()))

    def lora_parameters(self, targets: list[str], rank: int) -> int:
        shapes = self.module_shapes()
        missing = [t for t in targets if t not in shapes]
        if missing:
            raise ValueError(f"LoRA targets {missing} are not modules of {self.name}; it has {sorted(shapes)}")
        return self.layers * sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets)


KNOWN_MODELS = {
    "llama-3.1-8b": ModelSpec("Llama-3.1-8B", 4096, 32, 14336, 128256, 32, 8),
    "llama-3.1-70b": ModelSpec("Llama-3.1-70B", 8192, 80, 28672, 128256, 64, 8),
    "llama-3.1-405b": ModelSpec("Llama-3.1-405B", 16384, 126, 53248, 128256, 128, 8),
    "mistral-7b": ModelSpec("Mistral-7B-v0.2", 4096, 32, 14336, 32000, 32, 8),
    "smollm2-135m": ModelSpec("SmolLM2-135M", 576, 30, 1536, 49152, 9, 3, tied_embeddings=True),
}
ALIASES = {"meta-llama/llama-3.1-8b-instruct": "llama-3.1-8b", "meta-llama/llama-3.1-70b-instruct": "llama-3.1-70b",
           "meta-llama/meta-llama-3.1-8b-instruct": "llama-3.1-8b", "mistralai/mistral-7b-instruct-v0.2": "mistral-7b",
           "embedded": "smollm2-135m", "8b": "llama-3.1-8b", "70b": "llama-3.1-70b"}


def model_spec(name: str) -> ModelSpec:
    """A known model (by short name or hub id) or a local HF directory's config.json."""
    key = ALIASES.get(name.lower(), name.lower())
    if key in KNOWN_MODELS:
        return KNOWN_MODELS[key]
    from pathlib import Path

    config = Path(name).expanduser() / "config.json"
    if config.is_file():
        import json

        c = json.loads(config.read_text())
        return ModelSpec(c.get("_name_or_path") or name, c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"],
                         c["vocab_size"], c["num_attention_heads"], c.get("num_key_value_heads") or c["num_attention_heads"],
                         bool(c.get("tie_word_embeddings", False)))
    raise ValueError(f"unknown model '{name}': use one of {', '.join(sorted(KNOWN_MODELS))} or a directory with config.json")


@dataclass(frozen=True)
class Setting:
    gpus_per_node: int = 8
    nodes: int = 1
    zero_stage: int = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    lora: bool = True
    lora_rank: int = 16
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    seq_len: int = 1000
    micro_batch: int = 7
    gradient_checkpointing: bool = True
    bytes_per_param: int = 2  # bf16 weights
    gpu_memory_gib: float = 80.0
    cpu_memory_gib: float = 1800.0  # per node (an 8 x H100 node has about 2 TB)

    @property
    def gpus(self) -> int:
        return self.gpus_per_node * self.nodes

    def describe(self) -> str:
        offload = "+".join(x for x, on in (("optimizer", self.offload_optimizer), ("params", self.offload_params)) if on)
        return (f"{self.nodes} x {self.gpus_per_node} GPUs, ZeRO-{self.zero_stage}"
                f"{' offload ' + offload if offload else ''}, {'LoRA r=' + str(self.lora_rank) if self.lora else 'full'}, "
                f"micro-batch {self.micro_batch} x seq {self.seq_len}, checkpointing {'on' if self.gradient_checkpointing else 'off'}")


OVERHEAD_GIB = 3.0  # CUDA context, NCCL buffers, allocator fragmentation
ACTIVATION_BYTES_PER_TOKEN_HIDDEN = 34  # one decoder layer's stored activations in bf16 with fused attention


@dataclass
class Plan:
    setting: Setting
    model: str
    parameters: int
    trained_parameters: int
    gpu: dict[str, float] = field(default_factory=dict)  # GiB per GPU, by part
    cpu_per_node: dict[str, float] = field(default_factory=dict)  # GiB per node, by part

    @property
    def gpu_total(self) -> float:
        return sum(self.gpu.values())

    @property
    def cpu_total(self) -> float:
        return sum(self.cpu_per_node.values())

    @property
    def fits(self) -> bool:
        return self.gpu_total <= self.setting.gpu_memory_gib and self.cpu_total <= self.setting.cpu_memory_gib

    def as_dict(self) -> dict:
        return {"model": self.model, "setting": asdict(self.setting), "parameters": self.parameters,
                "trained_parameters": self.trained_parameters, "gpu_gib": self.gpu, "gpu_total_gib": self.gpu_total,
                "cpu_per_node_gib": self.cpu_per_node, "cpu_total_gib": self.cpu_total, "fits": self.fits}


def model_states(p: int, t: int, s: Setting, largest_layer: int) -> tuple[float, float]:
    """(GPU bytes per GPU, CPU bytes per node) of weights, gradients and optimizer states.

    ``p`` parameters of which ``t`` are trained. For t == p these are DeepSpeed's estimators with
    additional_buffer_factor 1 (zero_init on for ZeRO-3)."""
    n, gpn, nodes = s.gpus, s.gpus_per_node, s.nodes
    frozen16 = s.bytes_per_param * (p - t)
    trained16 = s.bytes_per_param * t
    if s.zero_stage < 3:
        if s.offload_optimizer:
            gpu = frozen16 + trained16
            cpu = t * max(4 * n, 16)
        else:
            states = 18 * t if s.zero_stage == 0 else 18 * t / n
            gpu = frozen16 + trained16 + states
            cpu = t * 4 * gpn
        return gpu, cpu
    layer = 4 * largest_layer
    if s.offload_optimizer and s.offload_params:
        return layer, (frozen16 + 18 * t) / nodes
    if s.offload_optimizer:
        return layer + (frozen16 + trained16) / n, 16 * t / nodes
    return layer + (frozen16 + 18 * t) / n, largest_layer * 4 * gpn


def plan(model: ModelSpec, s: Setting) -> Plan:
    p = model.parameters
    t = model.lora_parameters(list(s.lora_targets), s.lora_rank) if s.lora else p
    if s.lora:
        p += t  # the adapter's own parameters
    gpu_states, cpu_states = model_states(p, t, s, model.largest_layer)
    sequences = 2 * s.micro_batch  # chosen and rejected
    tokens = sequences * s.seq_len
    per_layer = tokens * model.hidden * ACTIVATION_BYTES_PER_TOKEN_HIDDEN
    if s.gradient_checkpointing:  # each layer's input is kept; one layer is recomputed at a time
        activations = model.layers * tokens * model.hidden * s.bytes_per_param + per_layer
    else:
        activations = model.layers * per_layer
    logits = tokens * model.vocab * (s.bytes_per_param + 4 + 4)  # bf16 logits, fp32 log-softmax and its grad
    # Loading: without ZeRO-3's partitioned init every worker materializes the whole model in CPU memory first.
    loading = s.gpus_per_node * (model.parameters * s.bytes_per_param if s.zero_stage < 3 else 5 * GIB)
    result = Plan(s, model.name, p, t)
    result.gpu = {"model_states": gpu_states / GIB, "activations": activations / GIB, "logits": logits / GIB,
                  "overhead": OVERHEAD_GIB}
    result.cpu_per_node = {"model_states": cpu_states / GIB, "loading_peak": loading / GIB}
    return result


LADDER = [  # from fastest to most memory-frugal at a given size
    dict(zero_stage=2, offload_optimizer=False, offload_params=False),
    dict(zero_stage=3, offload_optimizer=False, offload_params=False),
    dict(zero_stage=3, offload_optimizer=True, offload_params=False),
    dict(zero_stage=3, offload_optimizer=True, offload_params=True),
]


def cheapest(model: ModelSpec, s: Setting, max_nodes: int = 16) -> Plan | None:
    """The first setting that fits: fewest nodes, then the fastest ZeRO/offload rung, then the largest
    micro-batch (halved down to 1; gradient accumulation keeps the effective batch)."""
    for nodes in range(1, max_nodes + 1):
        for rung in LADDER:
            batch = s.micro_batch
            while batch >= 1:
                candidate = plan(model, Setting(**{**asdict(s), **rung, "nodes": nodes, "micro_batch": batch,
                                                   "lora_targets": s.lora_targets}))
                if candidate.fits:
                    return candidate
                batch //= 2
    return None


def format_plan(result: Plan, suggestion: Plan | None = None) -> str:
    s = result.setting
    lines = [f"{result.model}: {result.parameters / 1e9:.2f}B parameters, {result.trained_parameters / 1e6:.1f}M trained",
             f"setting: {s.describe()}",
             f"per GPU (of {s.gpu_memory_gib:g} GiB): " + ", ".join(f"{k} {v:.1f}" for k, v in result.gpu.items())
             + f" = {result.gpu_total:.1f} GiB",
             f"per node CPU (of {s.cpu_memory_gib:g} GiB): " + ", ".join(f"{k} {v:.1f}" for k, v in result.cpu_per_node.items())
             + f" = {result.cpu_total:.1f} GiB",
             f"verdict: {'FITS' if result.fits else 'DOES NOT FIT'}"]
    if suggestion is not None and not result.fits:
        lines.append(f"cheapest setting that fits: {suggestion.setting.describe()} "
                     f"({suggestion.gpu_total:.1f} GiB per GPU, {suggestion.cpu_total:.1f} GiB CPU per node)")
    elif suggestion is None and not result.fits:
        lines.append("nothing up to 16 nodes fits: shorten the sequences or use LoRA")
    return "\n".join(lines)
