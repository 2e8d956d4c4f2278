"""Experiment trackers (MLflow, Weights & Biases) for ``train.loggers``: a pbt run's grow, mine, train and eval
metrics and its report, logged by the driver.

One tracker run per pbt run, named after it (``cfg.name``: an experiment cell's name carries its condition and seed)
and tagged with its run directory and seed; each round's stage outputs are logged to it as the stage finishes
(``round-<k>/grow/...``, ``round-<k>/mine/...``, ``round-<k>/train/...``, ``eval/<model>/<suite>/...``, the report
as artifacts). Each training run is a run of its own, ``<pbt run>/<stage>/<Ray Train run>`` (MLflow: a child of the
pbt run; W&B: in the pbt run's group), fed from rank 0's log lines as the TensorBoard events are
(:func:`pbt_ray.training.launch._show_progress`), so metrics reach the tracker from wherever the workers ran and
the workers need no tracker credentials.

Configured only from the environment, never from a config file: ``MLFLOW_TRACKING_URI`` (default
``sqlite:///<run dir>/mlflow/mlflow.db``), ``MLFLOW_EXPERIMENT_NAME`` (default ``pbt-ray``), ``WANDB_PROJECT``
(default ``pbt-ray``), ``WANDB_API_KEY`` / ``WANDB_MODE`` (without an API key W&B runs offline into
``<run dir>/wandb``; ``wandb sync`` uploads it later). Nothing secret is printed: a URI's user and password are cut.
A tracker that fails (a server down) is reported once and dropped; it never stops the run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

DRIVER_TRACKERS = ("mlflow", "wandb")  # tensorboard: pbt_ray.training.launch.tensorboard_writer
RUN_DIR_TAG = "pbt.run_dir"

_active: "Trackers | None" = None


def redact(uri: str) -> str:
    """A URI without its user and password (``http://user:token@host`` -> ``http://host``)."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))


def metric_key(key: str) -> str:
    """A key both MLflow and W&B accept: letters, digits, ``_ - . /`` and spaces."""
    return re.sub(r"[^\w\-. /]", "_", key)[:250]


def numeric_leaves(obj: Any, prefix: str = "") -> dict[str, float]:
    """Every finite number in nested dicts, keyed by its path (``a/b/c``); a two-number list (an interval) gives
    ``<key>_lo`` and ``<key>_hi``; booleans and strings are left out."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.update(numeric_leaves(value, f"{prefix}/{key}" if prefix else str(key)))
    elif isinstance(obj, bool) or obj is None:
        pass
    elif isinstance(obj, (int, float)):
        if math.isfinite(obj):
            out[metric_key(prefix)] = float(obj)
    elif isinstance(obj, (list, tuple)) and len(obj) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in obj):
        out.update(numeric_leaves({f"{prefix}_lo": obj[0], f"{prefix}_hi": obj[1]}))
    return out


class _MLflow:
    def __init__(self, client, run_id: str, experiment_id: str):
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id

    @classmethod
    def open(cls, cfg, log) -> "_MLflow":
        from mlflow import MlflowClient

        store = cfg.run_dir / "mlflow"
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            store.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{store / 'mlflow.db'}"
        client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "pbt-ray")
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(
            name, artifact_location=None if os.environ.get("MLFLOW_TRACKING_URI") else (store / "artifacts").as_uri())
        # A rerun of the same run directory logs on into its run.
        found = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_DIR_TAG}` = '{cfg.run_dir}' and "
                                   "tags.`mlflow.parentRunId` IS NULL", max_results=1)
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
        else:
            run_id = client.create_run(experiment_id, run_name=cfg.name, tags=_tags(cfg)).info.run_id
        log(f"[pbt] MLflow: run {cfg.name} ({run_id}) in experiment {name} at {redact(uri)}")
        return cls(client, run_id, experiment_id)

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric
        import time

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in metrics.items()]
        for start in range(0, len(items), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=items[start:start + 1000])

    def artifacts(self, path: Path, under: str) -> None:
        self.client.log_artifacts(self.run_id, str(path), under)

    def child(self, name: str, cfg) -> "_MLflow":
        tags = {**_tags(cfg), "mlflow.parentRunId": self.run_id}
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        return _MLflow(self.client, run.info.run_id, self.experiment_id)

    def close(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if ok else "FAILED")


class _WandB:
    def __init__(self, run):
        self.run = run

    @classmethod
    def open(cls, cfg, log, name: str | None = None, job_type: str = "pbt-run") -> "_WandB":
        import wandb

        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        directory = os.environ.get("WANDB_DIR") or str(cfg.run_dir)
        Path(directory).mkdir(parents=True, exist_ok=True)
        run = wandb.init(project=os.environ.get("WANDB_PROJECT", "pbt-ray"), name=name or cfg.name,
                         group=cfg.name, job_type=job_type, dir=directory, mode=mode, config=_tags(cfg),
                         reinit="create_new", settings=wandb.Settings(silent=True, console="off"))
        if name is None:
            where = f"offline in {run.dir}; `wandb sync` uploads it" if mode == "offline" else mode
            log(f"[pbt] W&B: run {cfg.name} ({where})")
        return cls(run)

    def log(self, metrics: dict[str, float], step: int) -> None:
        # W&B's own step only grows; a round or a training step is a metric the others are plotted against.
        self.run.log({**metrics, "step": step})

    def artifacts(self, path: Path, under: str) -> None:
        import wandb

        artifact = wandb.Artifact(metric_key(f"{self.run.group}-{under}").replace("/", "-").replace(" ", "-"),
                                  type=under)
        artifact.add_dir(str(path))
        self.run.log_artifact(artifact)

    def child(self, name: str, cfg) -> "_WandB":
        return _WandB.open(cfg, print, name=name, job_type="train")

    def close(self, ok: bool) -> None:
        self.run.finish(exit_code=0 if ok else 1)


def _tags(cfg) -> dict[str, str]:
    return {RUN_DIR_TAG: str(cfg.run_dir), "pbt.name": cfg.name, "pbt.seed": str(cfg.train.seed),
            "pbt.rounds": str(cfg.rounds), "pbt.base_model": str(cfg.train.base_model)}


_OPENERS = {"mlflow": _MLflow.open, "wandb": _WandB.open}


class Trackers:
    """The open tracker runs of one pbt run; a failing tracker is reported once and dropped."""

    def __init__(self, runs: dict[str, Any], log):
        self.runs, self.log = runs, log

    def _each(self, what: str, call) -> None:
        for name, run in list(self.runs.items()):
            try:
                call(run)
            except Exception as exc:  # noqa: BLE001 - a tracker never stops the run
                self.log(f"[pbt] warning: {name} failed to {what} ({type(exc).__name__}: {exc}); "
                         f"{name} is off for the rest of this run")
                self.runs.pop(name, None)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        if metrics:
            self._each("log metrics", lambda run: run.log(metrics, step))

    def log_artifacts(self, path: Path, under: str) -> None:
        if path.is_dir():
            self._each("log artifacts", lambda run: run.artifacts(path, under))

    def child(self, name: str, cfg) -> "Trackers":
        """A training run of this pbt run in each tracker."""
        children: dict[str, Any] = {}
        for kind, run in self.runs.items():
            try:
                children[kind] = run.child(name, cfg)
            except Exception as exc:  # noqa: BLE001 - a tracker never stops the run
                self.log(f"[pbt] warning: {kind} could not start training run {name} ({type(exc).__name__}: {exc})")
        return Trackers(children, self.log)

    def close(self, ok: bool = True) -> None:
        self._each("finish its run", lambda run: run.close(ok))


@contextlib.contextmanager
def session(cfg, log=print) -> Iterator[Trackers | None]:
    """The pbt run's tracker runs for ``train.loggers`` while the loop runs (none asked for: None)."""
    global _active
    wanted = [name for name in cfg.train.loggers if name in DRIVER_TRACKERS]
    if not wanted:
        yield None
        return
    runs: dict[str, Any] = {}
    for name in wanted:
        try:
            runs[name] = _OPENERS[name](cfg, log)
        except Exception as exc:  # noqa: BLE001 - the run goes on without it
            log(f"[pbt] warning: {name} could not start ({type(exc).__name__}: {exc}); the run goes on without it")
    trackers = Trackers(runs, log)
    previous, _active = _active, trackers
    ok = False
    try:
        yield trackers
        ok = True
    finally:
        _active = previous
        trackers.close(ok)


def active() -> Trackers | None:
    return _active


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stage_outputs(stage: str, round_dir: Path, run_dir: Path, k: int,
                  eval_labels: tuple[str, ...] = ()) -> tuple[dict[str, float], int]:
    """The metrics a finished stage left on disk, keyed for the tracker, and the step they belong to (the round).
    ``eval_labels``: the models this round's eval stage evaluated (earlier rounds' were logged by their rounds)."""
    if stage == "grow":
        return numeric_leaves(_load(round_dir / "grow_summary.json") or {}, f"round-{k}/grow"), k
    if stage == "mine":
        return numeric_leaves(_load(round_dir / "preferences" / "mine_stats.json") or {}, f"round-{k}/mine"), k
    if stage == "train":
        return numeric_leaves(_load(round_dir / "train_metrics.json") or {}, f"round-{k}/train"), k
    if stage == "eval":
        metrics: dict[str, float] = {}
        for path in sorted((run_dir / "eval").glob("*/*/metrics.json")):
            model, suite = path.parent.parent.name, path.parent.name
            if model not in eval_labels:
                continue
            metrics.update(numeric_leaves(_load(path) or {}, f"eval/{model}/{suite}"))
        return metrics, k
    return {}, k


def stage_done(stage: str, round_dir: Path, run_dir: Path, k: int, eval_labels: tuple[str, ...] = ()) -> None:
    """Log what a finished stage left to the active tracker runs (no-op without any)."""
    trackers = _active
    if trackers is None:
        return
    metrics, step = stage_outputs(stage, round_dir, run_dir, k, eval_labels)
    trackers.log_metrics(metrics, step)
    if stage == "report":
        trackers.log_artifacts(run_dir / "report", "report")
