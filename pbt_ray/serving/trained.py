"""Serving a trained PBT model next to the debaters: `pbt serve --trained runs/<name>`.

ray.serve.llm (2.60) loads LoRA adapters dynamically only from object storage (``s3://``, ``gs://``,
``abfss://``, ``azure://``; a local ``dynamic_lora_loading_path`` is rejected), so:

* a local training run is served as a **merged model**: the adapter merged into its base once
  (``<run>/merged``, reused afterwards), added to the app as model ``pbt-trained`` with role ``trained``;
* adapters in object storage are served by **LoRA multiplexing** on the base model's replicas
  (``serve.models[].lora_path``): clients ask for ``<base id>:<adapter name>``.
"""

from __future__ import annotations

import json
from pathlib import Path

from pbt_ray.config import PBTConfig, ServedModelConfig
from pbt_ray.models import ModelError

TRAINED_ID = "pbt-trained"
TRAINED_ROLE = "trained"
MERGED_MARKER = "pbt_merged.json"


def has_adapter(run_dir: str | Path) -> bool:
    """Whether a training run left an adapter (``<run>/adapter``)."""
    return (Path(run_dir) / "adapter" / "adapter_config.json").is_file()


def find_adapter(path: str | Path) -> Path:
    """The adapter directory of a training run (``<run>/adapter``) or the adapter directory itself."""
    path = Path(path).expanduser()
    for candidate in (path / "adapter", path):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise ModelError(f"no trained adapter at {path}: expected {path}/adapter/adapter_config.json "
                     "(the output of `pbt train`) or an adapter directory")


def adapter_base(adapter: Path) -> str:
    """The model the adapter was trained on: what `pbt train` recorded, else PEFT's own record."""
    recorded = adapter / "pbt_base_model.txt"
    if recorded.is_file():
        return recorded.read_text().strip()
    base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise ModelError(f"{adapter}: cannot tell which base model the adapter belongs to")
    return base


def merged_model(path: str | Path, log=print) -> Path:
    """The adapter merged into its base, once: ``<adapter's parent>/merged``."""
    from pbt_ray.training.launch import merge_adapter

    adapter = find_adapter(path)
    out = adapter.parent / "merged"
    stamp = {"adapter": str(adapter), "adapter_mtime": (adapter / "adapter_config.json").stat().st_mtime}
    marker = out / MERGED_MARKER
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return out
    base = adapter_base(adapter)
    log(f"[pbt] merging the trained adapter {adapter} into {base} -> {out}")
    tmp = out.with_name(".merged.tmp")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    merge_adapter(base, adapter, tmp, log=log)
    marker_tmp = tmp / MERGED_MARKER
    marker_tmp.write_text(json.dumps(stamp) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def with_trained_model(cfg: PBTConfig, merged: Path, model_id: str = TRAINED_ID, role: str | None = TRAINED_ROLE,
                       base_id: str | None = None) -> PBTConfig:
    """The config with the merged trained model added to the app and ``role`` pointing at it. Its engine settings
    (tensor parallel, memory, context) are its base's (``base_id``, default the served base of train.base_model,
    :meth:`PBTConfig.base_served`): a trained 70B needs the 70B's tensor parallel size, not the first model's."""
    template = cfg.serve.model(base_id) if base_id else cfg.base_served()
    # Absolute: the replicas do not run in the driver's working directory on a real cluster.
    trained = ServedModelConfig(**{**template.model_dump(), "id": model_id, "source": str(Path(merged).resolve()),
                                   "min_replicas": 1, "max_replicas": max(1, template.max_replicas)})
    models = [m for m in cfg.serve.models if m.id != model_id] + [trained]
    roles = {**cfg.serve.roles, **({role: model_id} if role else {})}
    serve = cfg.serve.model_copy(update={"models": models, "roles": roles})
    return cfg.model_copy(update={"serve": serve})
