"""Stages as declared units: what each reads and writes, and a fingerprint that says when its result is stale.

A stage reads a slice of the config and the outputs of the stages before it. Its fingerprint hashes both:
the config slice (operational knobs that cannot change a result, like growers or checkpoint cadence, are
left out) and the *output digests* its upstream stages recorded when they last ran. So:

- edit ``train.epochs`` and only ``train`` and what reads it (eval, report) are stale, never grow or mine;
- a grow that finished some trees only records the digest of the trees it has; the rerun that grows the
  rest records a new digest, and mine, train, eval and report run again on the complete set;
- ``--from STAGE`` is the explicit form: it forgets that stage and everything downstream.

The state lives in ``<run dir>/loop_state.json`` (version 2). Pure: no Ray, so it tests in milliseconds, and a
recipe is a tuple of :class:`Stage` declarations over the shared parts (``PBT_STAGES`` below is PBT's).

Why not a library: DVC wants a git repository and its own CLI around every stage; luigi and Prefect decide
"done" by a target existing (or cache by task inputs) and have no notion of "a config slice changed";
pydoit's ``config_changed`` comes closest but keeps its own dbm database and task-runner CLI. What we need
is about a hundred lines of hashing over pydantic dumps and one JSON file.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "loop_state.json"
STATE_VERSION = 2


class StageError(ValueError):
    """The run directory's stage state cannot be used (another version, an unknown stage)."""


@dataclass(frozen=True)
class Stage:
    """One unit of a recipe: its name, the stages whose outputs it reads, the config it reads (dotted paths
    into the dumped config, minus ``ignore``), and the files it writes under the run directory."""

    name: str
    reads: tuple[str, ...] = ()
    config: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    describe: str = ""


def _get(data: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(data, list):
            data = [_get(item, part) for item in data]
        elif isinstance(data, dict):
            data = data.get(part)
        else:
            return None
    return data


def _drop(data: dict, path: str) -> None:
    head, _, rest = path.partition(".")
    if head not in data:
        return
    if not rest:
        data.pop(head, None)
        return
    inner = data[head]
    for item in inner if isinstance(inner, list) else [inner]:
        if isinstance(item, dict):
            _drop(item, rest)


# Config fields added after run directories existed, whose unset value (None) means what older versions did:
# left out of a fingerprint while unset, so upgrading pbt-ray never makes a finished stage stale.
ADDED_LATER = ("grow.question_ids",)


def config_slice(stage: Stage, config: dict) -> dict:
    """The part of the (dumped) config ``stage`` depends on."""
    picked = {path: json.loads(json.dumps(_get(config, path), default=str)) for path in stage.config}
    for path in ADDED_LATER:
        head = next((p for p in stage.config if path.startswith(p + ".")), None)
        if head is not None and isinstance(picked[head], dict) and _get(picked[head], path[len(head) + 1:]) is None:
            _drop(picked[head], path[len(head) + 1:])
    for path in stage.ignore:
        head = next((p for p in stage.config if path == p or path.startswith(p + ".")), None)
        if head is None or path == head:
            continue
        value = picked[head]
        rest = path[len(head) + 1:]
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                _drop(item, rest)
    return picked


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint(stage: Stage, config: dict, upstream: dict[str, str | None], extra: dict | None = None) -> str:
    """Hash of the stage's config slice, its upstream output digests and ``extra`` (e.g. the previous round's
    model)."""
    return digest({"stage": stage.name, "config": config_slice(stage, config),
                   "inputs": {name: upstream.get(name) for name in stage.reads}, "extra": extra or {}})


def files_digest(paths: list[Path]) -> str | None:
    """Digest of files' names, sizes and contents (None when there are none)."""
    h = hashlib.sha256()
    found = False
    for path in sorted(paths):
        if path.is_file():
            found = True
            h.update(path.name.encode())
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16] if found else None


@dataclass
class StageState:
    """What ``loop_state.json`` says of a run directory's stages."""

    run_dir: Path
    stages: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: Path) -> "StageState":
        path = Path(run_dir) / STATE_FILE
        if not path.is_file():
            return cls(Path(run_dir))
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise StageError(f"{path} is not readable JSON ({exc}); move it away to start the stages over "
                             "(finished results stay where they are)") from None
        stages = data.get("stages", {}) if isinstance(data, dict) else None
        if not isinstance(data, dict) or not isinstance(stages, dict) or \
                not all(isinstance(v, dict) for v in stages.values()):
            # Valid JSON of another shape (truncated by hand, another tool's file) would fail later, deep in a stage.
            raise StageError(f"{path} is not a loop state (expected {{\"version\": {STATE_VERSION}, \"stages\": "
                             "{stage: {...}}}); move it away to start the stages over (finished results stay where "
                             "they are)")
        if data.get("version") == 1:  # the list of finished stages only: every stage is stale, nothing is lost
            return cls(Path(run_dir), {name: {"fingerprint": None, "legacy": True} for name in data.get("done", {})})
        if data.get("version") != STATE_VERSION:
            raise StageError(f"{path}: loop state version {data.get('version')!r}; this pbt-ray reads "
                             f"{STATE_VERSION}. Use a new run name (name=...) or move the directory away.")
        return cls(Path(run_dir), data.get("stages", {}))

    def save(self) -> None:
        path = self.run_dir / STATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{STATE_FILE}.tmp")
        tmp.write_text(json.dumps({"version": STATE_VERSION, "stages": self.stages}, indent=2, default=str) + "\n")
        tmp.replace(path)

    def outputs(self) -> dict[str, str | None]:
        return {name: s.get("output") for name, s in self.stages.items()}

    def record(self, stage: Stage, fp: str, config: dict, output: str | None, complete: bool = True,
               info: dict | None = None) -> None:
        self.stages[stage.name] = {"fingerprint": fp, "config": config_slice(stage, config), "output": output,
                                   "complete": complete, "info": info or {},
                                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                   "attempt": self.stages.get(stage.name, {}).get("attempt", 0)}
        self.save()

    def forget(self, names: list[str], save: bool = True) -> None:
        """Forget stages (``--from``): they rerun; their attempt count goes up, so a stage keyed by it (the
        Ray Train run name) starts fresh instead of resuming the finished run."""
        for name in names:
            attempt = self.stages.get(name, {}).get("attempt", 0) + 1
            self.stages[name] = {"fingerprint": None, "attempt": attempt, "forgotten": True}
        if save:
            self.save()

    def attempt(self, name: str) -> int:
        return self.stages.get(name, {}).get("attempt", 0)


def downstream(stages: tuple[Stage, ...], name: str) -> list[str]:
    """``name`` and every stage that reads it, directly or not, in recipe order."""
    hit = {name}
    for stage in stages:
        if any(r in hit for r in stage.reads):
            hit.add(stage.name)
    return [s.name for s in stages if s.name in hit]


def status(stages: tuple[Stage, ...], config: dict, state: StageState,
           extra: dict[str, dict] | None = None) -> list[tuple[str, str, str]]:
    """(stage, done | stale | to run, why) for each stage, as a rerun would find them. Upstream digests are the
    recorded ones; a stage downstream of one that will run is 'to run' too (its inputs will change)."""
    out, changing = [], set()
    recorded = state.outputs()
    for stage in stages:
        seen = state.stages.get(stage.name)
        fp = fingerprint(stage, config, recorded, (extra or {}).get(stage.name))
        if seen is None or seen.get("forgotten") or "fingerprint" not in seen:
            verdict, why = "to run", "never ran" if seen is None else "asked to rerun (--from)"
        elif seen.get("legacy"):
            verdict, why = "stale", "recorded by an older pbt-ray without fingerprints"
        elif not seen.get("complete", True):
            verdict, why = "to run", "its last run did not finish every item: " + json.dumps(seen.get("info", {}))
        elif set(stage.reads) & changing:
            verdict, why = "to run", f"after {', '.join(sorted(set(stage.reads) & changing))}"
        elif seen.get("fingerprint") != fp:
            verdict, why = "stale", _why(stage, config, seen, recorded)
        else:
            verdict, why = "done", f"finished {seen.get('finished', '?')}"
        if verdict != "done":
            changing.add(stage.name)
        out.append((stage.name, verdict, why))
    return out


def _why(stage: Stage, config: dict, seen: dict, recorded: dict[str, str | None]) -> str:
    now, then = config_slice(stage, config), seen.get("config") or {}
    changed = sorted(_changed(now, then))
    if changed:
        return "config changed: " + ", ".join(changed[:6]) + (" ..." if len(changed) > 6 else "")
    return "its inputs changed (" + ", ".join(stage.reads) + ")" if stage.reads else "its inputs changed"


def _changed(now: Any, then: Any, prefix: str = "") -> list[str]:
    if isinstance(now, dict) and isinstance(then, dict):
        keys = set(now) | set(then)
        return [p for k in keys for p in _changed(now.get(k), then.get(k), f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if now != then else []


# ---------------------------------------------------------------------------------------------------------
# PBT's recipe. Operational fields (how fast, where, how many workers wait on the app) are ignored: changing
# them never changes a result, so it must not throw finished work away.

_SERVED = ("serve.models", "serve.roles", "extract")
_SERVE_OPS = tuple(f"serve.models.{f}" for f in (
    "min_replicas", "max_replicas", "target_ongoing_requests", "max_ongoing_requests", "cpus_per_replica",
    "cpu_kv_cache_gib", "gpu_memory_utilization", "enable_prefix_caching", "enforce_eager", "accelerator_type",
    "gpu_memory_gib", "engine_kwargs", "max_adapters", "tensor_parallel_size"))

PBT_STAGES: tuple[Stage, ...] = (
    Stage("debate", config=("debate", *_SERVED, "grow.persuader", "grow.independent_first", "grow.seed"),
          ignore=_SERVE_OPS, writes=("debate.json",), describe="one evaluation-mode dialogue, printed"),
    Stage("grow", config=("grow", *_SERVED), ignore=(*_SERVE_OPS, *(f"grow.{f}" for f in (
        "batch_size", "min_growers", "max_growers", "cpus_per_grower", "max_in_flight", "retries", "speculative",
        "endpoint", "client"))), writes=("trees/", "failed/", "grow_summary.json"), describe="persuasion trees"),
    Stage("mine", reads=("grow",), config=("mine", *_SERVED), ignore=(*_SERVE_OPS, "mine.trees", "mine.out",
                                                                     "mine.on_broken_tree"),
          writes=("preferences/",), describe="resist / accept preference pairs"),
    Stage("train", reads=("mine",), config=("train", "extract"), ignore=tuple(f"train.{f}" for f in (
        "pairs", "storage_path", "checkpoint_every", "keep_checkpoints", "max_failures", "logging_steps",
        "cpus_per_worker", "accelerator_type", "loggers", "tensorboard", "run_name")),
          writes=("adapter/", "train_metrics.json", "sft-merged/", "merged/"), describe="SFT then DPO of a LoRA adapter"),
    Stage("eval", reads=("mine", "train"), config=("eval", *_SERVED, "train.base_model"),
          ignore=(*_SERVE_OPS, "eval.concurrency"), writes=("eval/",), describe="base and trained, every suite"),
    Stage("report", reads=("eval",), writes=("report/",), describe="report.json and report.html"),
)


def stage_named(stages: tuple[Stage, ...], name: str) -> Stage:
    for stage in stages:
        if stage.name == name:
            return stage
    raise StageError(f"no stage '{name}'; stages are {', '.join(s.name for s in stages)}")
