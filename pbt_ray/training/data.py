"""Pairs files and models checked before any worker starts, and the datasets the workers load.

Everything here runs on the driver first (cheap checks with clear errors: an empty or wrongly shaped pairs
file, a model without a chat template, a sequence length over the model's, LoRA targets the model lacks)
and the loaders run again inside each worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MESSAGE_COLUMNS = ("prompt", "chosen", "rejected")
SAMPLE_INDEX = "sample_index"  # row number in the pairs file (dev rows: -1 - row), to record what each step saw


class TrainDataError(ValueError):
    """The pairs or the model cannot be trained on; the message says what is wrong and what to do."""


def pairs_files(pairs_dir: str | Path) -> dict[str, Path]:
    """The train (required) and dev (optional) pairs files `pbt mine` wrote under ``pairs_dir``."""
    root = Path(pairs_dir).expanduser()
    if (root / "pairs").is_dir():
        root = root / "pairs"
    train = root / "train.parquet"
    if not train.is_file():
        raise TrainDataError(f"no pairs file {train}; run `pbt mine` first or pass --pairs <dir written by pbt mine>")
    files = {"train": train}
    if (root / "dev.parquet").is_file():
        files["dev"] = root / "dev.parquet"
    return files


def check_pairs_file(path: Path, *, required: bool = True, columns: tuple[str, ...] = MESSAGE_COLUMNS) -> int:
    """Rows in ``path`` after checking it holds conversational preference pairs (or, with
    ``columns=("prompt", "completion")``, SFT records); raises TrainDataError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        rows = pq.read_metadata(path).num_rows
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear error
        raise TrainDataError(f"{path}: not a readable Parquet file ({exc})") from None
    for column in columns:
        if column not in schema.names:
            raise TrainDataError(f"{path}: no '{column}' column (has {', '.join(schema.names)}); "
                                 "expected the pairs written by `pbt mine`")
        kind = schema.field(column).type
        ok = pa.types.is_list(kind) and pa.types.is_struct(kind.value_type) and \
            {"role", "content"} <= {f.name for f in kind.value_type}
        if not ok:
            raise TrainDataError(f"{path}: column '{column}' is {kind}, expected a list of {{role, content}} messages")
    if required and rows == 0:
        raise TrainDataError(f"{path}: no pairs to train on; grow more trees or mine with --balance none")
    if rows:
        first = pq.read_table(path, columns=list(columns)).slice(0, 1).to_pylist()[0]
        if not first["prompt"] or first["prompt"][-1]["role"] != "user":
            raise TrainDataError(f"{path}: row 0's prompt must end with a user message")
        for column in columns[1:]:
            if [m["role"] for m in first[column]] != ["assistant"]:
                raise TrainDataError(f"{path}: row 0's '{column}' must be one assistant message")
    return rows


def load_pairs(path: str | Path, limit: int | None = None, dev: bool = False):
    """A `datasets.Dataset` with the message columns and the row index (for recording data order)."""
    from datasets import load_dataset

    data = load_dataset("parquet", data_files={"split": str(path)}, split="split")
    index = [-1 - i if dev else i for i in range(len(data))]
    data = data.select_columns(list(MESSAGE_COLUMNS)).add_column(SAMPLE_INDEX, index)
    if limit is not None and len(data) > limit:
        data = data.select(range(limit))
    return data


def resolve_model_path(base_model: str) -> str:
    """'embedded' -> the converted embedded model directory; anything else is passed to transformers."""
    if base_model == "embedded":
        from pbt_ray.models import prepare_embedded_model

        return str(prepare_embedded_model())
    local = Path(base_model).expanduser()
    if local.is_dir():  # workers do not share the driver's working directory: an absolute path
        return str(local.resolve())
    return base_model


def check_model(model_path: str, max_length: int, lora_targets: list[str]) -> dict[str, Any]:
    """Chat template, context length and LoRA targets, from the config and tokenizer only (no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(model_path)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as exc:
        raise TrainDataError(f"cannot load the model config/tokenizer of '{model_path}': {exc}") from None
    if not tokenizer.chat_template:
        raise TrainDataError(f"'{model_path}' has no chat template: the pairs are chat messages, so train a chat "
                             "(instruct) model or add a chat_template to its tokenizer_config.json")
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and max_length > limit:
        raise TrainDataError(f"train.max_length={max_length} is longer than '{model_path}' supports ({limit} positions)")
    with torch.device("meta"):  # module names without allocating any weights
        model = AutoModelForCausalLM.from_config(config)
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    missing = [t for t in lora_targets if t not in names]
    if missing:
        raise TrainDataError(f"LoRA targets {missing} are not modules of '{model_path}'; its linear layers are "
                             f"{sorted(names)} (set train.lora_targets)")
    params = sum(p.numel() for p in model.parameters())
    return {"model_type": config.model_type, "parameters": params, "max_positions": limit,
            "linear_modules": sorted(names)}
