"""`pbt experiment`: the paper's conditions x seeds from one set of mined pairs (docs/experiments.md).

One run's trees are grown and mined as `pbt run` does it (same stage records). From the mined candidates each
trained condition gets its training data (:func:`condition_data`: accept-only and resist-only take N pairs of
one side, balanced N of each, N the scarcer side's train pairs, PBT_SPEC.md §2.11); every condition shares
one dev and one test split holding both sides. Each (condition, seed) cell trains an adapter with that seed,
is merged and served next to the base, and is evaluated on the shared test pairs and the same held-out
questions (misinformation towards the same targets). ``base`` is one cell, evaluated once.

Layout under ``<run dir>/experiment/``::

    data/<condition>/pairs/{train,dev}.parquet        the condition's pairs (dev: identical for all)
    data/test.parquet                                 the shared test pairs (experiment.test_pairs)
    misinformation_targets.json                       the wrong answers every cell is persuaded towards
    cells/<cell>/cell.json                            the cell's fingerprint and outcome; reused when it matches
    cells/<cell>/eval/<suite>/{results.jsonl,metrics.json}
    experiment.json, experiment.html                  the table (pbt_ray/evaluation/experiment_report.py)

A cell is reused when its fingerprint (its condition's pairs, the train and eval settings, the seed) matches, so
adding a seed or a condition trains only the new cells.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pbt_ray.config import PBTConfig

CELL_FILE = "cell.json"


class ExperimentError(ValueError):
    """An experiment cannot run as configured; the message says what to change."""


@dataclass(frozen=True)
class Cell:
    condition: str
    seed: int | None  # None: the base model, evaluated once

    @property
    def name(self) -> str:
        return "base" if self.seed is None else f"{self.condition}-seed{self.seed}"


def cells(cfg: PBTConfig) -> list[Cell]:
    """Base first, then seed by seed every trained condition: an experiment stopped early has every condition."""
    e = cfg.experiment
    trained = [c for c in e.conditions if c != "base"]
    return ([Cell("base", None)] if "base" in e.conditions else []) + [Cell(c, s) for s in e.seeds for c in trained]


def experiment_dir(cfg: PBTConfig) -> Path:
    return cfg.run_dir / "experiment"


def suites(cfg: PBTConfig) -> list[str]:
    return list(cfg.experiment.suites or cfg.eval.suites)


def check(cfg: PBTConfig) -> None:
    if cfg.grow.endpoint:
        raise ExperimentError(f"an experiment serves each trained cell next to the base, so it cannot grow against an "
                              f"outside endpoint (grow.endpoint={cfg.grow.endpoint}); unset grow.endpoint")
    if cfg.rounds > 1:
        raise ExperimentError("an experiment compares conditions within one round; set rounds=1")


# ---- data ------------------------------------------------------------------------------------------------------


def condition_data(cfg: PBTConfig, log=print) -> dict[str, dict[str, Any]]:
    """Each trained condition's pairs under ``experiment/data/<condition>/`` from the run's mined candidates;
    returns {condition: {"dir", "train", "dev", "test", "ids"}} with the pair ids (the data's identity)."""
    from pbt_ray.preferences.datasets import select
    from pbt_ray.preferences.mining import _write
    from pbt_ray.preferences.pairs import read_pairs

    source = cfg.run_dir / "preferences" / "candidates.parquet"
    if not source.is_file():
        raise ExperimentError(f"no mined pairs at {source}; the experiment grows and mines first (pbt run's stages)")
    pairs = read_pairs(source)
    out = {}
    for condition in [c for c in cfg.experiment.conditions if c != "base"]:
        selection = select(pairs, condition, cfg.mine.seed, tuple(cfg.mine.split_fractions))
        ids = {split: sorted(p.pair_id for p in chosen) for split, chosen in selection.splits.items()}
        where = experiment_dir(cfg) / "data" / condition
        stats = {"condition": condition, "source": str(source), "pairs": {s: len(v) for s, v in ids.items()},
                 "available": {s: dict(c) for s, c in selection.available.items()}}
        _write(where, pairs, selection, stats)
        out[condition] = {"dir": where, **{s: len(v) for s, v in ids.items()}, "ids": ids}
    # The shared test set: every resist and accept pair of the test split, or the balanced N + N.
    test = select(pairs, "none" if cfg.experiment.test_pairs == "all" else "balanced", cfg.mine.seed,
                  tuple(cfg.mine.split_fractions)).splits.get("test", [])
    _write_pairs(experiment_dir(cfg) / "data" / "test.parquet", test)
    if out:
        tests = {c: d["ids"]["test"] for c, d in out.items()}
        assert len({tuple(v) for v in tests.values()}) == 1, f"conditions got different test pairs: {tests}"
        sides = ", ".join(f"{c} {d['train']}" for c, d in out.items())
        kinds = Counter(p.type for p in test)
        log(f"[pbt] experiment data from {source}: train pairs {sides}; shared dev {next(iter(out.values()))['dev']}; "
            f"shared test ({cfg.experiment.test_pairs}) {kinds.get('resist', 0)} resist + {kinds.get('accept', 0)} accept")
    return out


def _write_pairs(path: Path, pairs: list) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pbt_ray.preferences.pairs import pair_schema, to_row

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.Table.from_pylist([to_row(p, "test") for p in pairs], schema=pair_schema()), tmp)
    os.replace(tmp, path)


def shared_test(cfg: PBTConfig) -> Path:
    """The test pairs every cell is evaluated on (experiment.test_pairs of the run's test split)."""
    return experiment_dir(cfg) / "data" / "test.parquet"


# ---- cells -----------------------------------------------------------------------------------------------------


def cell_config(cfg: PBTConfig, cell: Cell) -> PBTConfig:
    """The cell's own run directory (``experiment/cells/<cell>``), its training seed and data."""
    train = cfg.train.model_copy(update={"seed": cell.seed if cell.seed is not None else cfg.train.seed,
                                         "pairs": None, "run_name": f"{cfg.train.run_name}-{cell.name}"})
    return cfg.model_copy(update={"runs_dir": str(experiment_dir(cfg) / "cells"), "name": cell.name, "train": train})


def cell_fingerprint(cfg: PBTConfig, cell: Cell, data: dict[str, dict[str, Any]], test_ids: list[str]) -> str:
    from pbt_ray.stages import PBT_STAGES, config_slice, digest, stage_named

    config = cfg.model_dump(mode="json")
    key: dict[str, Any] = {"cell": cell.name, "suites": suites(cfg), "test": test_ids,
                           "eval": config_slice(stage_named(PBT_STAGES, "eval"), config)}
    if cell.seed is not None:
        key["train"] = config_slice(stage_named(PBT_STAGES, "train"), cell_config(cfg, cell).model_dump(mode="json"))
        key["data"] = {s: data[cell.condition]["ids"][s] for s in ("train", "dev")}
    return digest(key)


def cell_record(cfg: PBTConfig, cell: Cell) -> dict[str, Any] | None:
    path = cell_config(cfg, cell).run_dir / CELL_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        record = exc
    if not isinstance(record, dict):  # broken by hand or by a full disk: say which cell, never guess it is done
        why = record if isinstance(record, Exception) else "not a JSON object"
        raise ExperimentError(f"{path}: not a cell record ({why}); move {path.parent} away and `pbt experiment` "
                              "runs that cell again")
    return record


def _record_cell(ccfg: PBTConfig, record: dict[str, Any]) -> None:
    path = ccfg.run_dir / CELL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{CELL_FILE}.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def plan(cfg: PBTConfig, data: dict[str, dict[str, Any]] | None = None) -> list[tuple[Cell, str]]:
    """Each cell as a rerun finds it: done (reused), stale (another fingerprint) or to run."""
    out = []
    for cell in cells(cfg):
        seen = cell_record(cfg, cell)
        if seen is None or not seen.get("complete"):
            out.append((cell, "to run"))
        elif data is None:
            out.append((cell, "done" if seen.get("fingerprint") else "to run"))
        else:
            fp = cell_fingerprint(cfg, cell, data, _test_ids(cfg))
            out.append((cell, "done" if seen.get("fingerprint") == fp else "stale"))
    return out


def _test_ids(cfg: PBTConfig) -> list[str]:
    path = shared_test(cfg)
    if not path.is_file():
        return []
    from pbt_ray.preferences.pairs import read_pairs

    return sorted(p.pair_id for p in read_pairs(path))


def _run_cell(cfg: PBTConfig, cell: Cell, url: str, data: dict[str, dict[str, Any]], fp: str, log) -> dict[str, Any]:
    from pbt_ray.loop import evaluate_suites, trained_endpoint, trained_seats
    from pbt_ray.serving.trained import TRAINED_ROLE

    ccfg = cell_config(cfg, cell)
    where = {"out_dir": ccfg.run_dir / "eval", "pairs": str(shared_test(cfg)),
             "targets_file": experiment_dir(cfg) / "misinformation_targets.json"}
    for old in ("eval", "adapter", "merged", "train_metrics.json"):  # another fingerprint's results never mix in
        path = ccfg.run_dir / old
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    record: dict[str, Any] = {"cell": cell.name, "condition": cell.condition, "seed": cell.seed, "fingerprint": fp}
    if cell.seed is None:
        done = evaluate_suites(cfg, cell.name, url, None, cfg.serve, suites=suites(cfg), log=log, **where)
        return {**record, "complete": True, "suites": sorted(done)}
    from pbt_ray.training.data import TrainDataError
    from pbt_ray.training.launch import prepare, train

    pairs_dir = str(data[cell.condition]["dir"])
    from pbt_ray.serving.app import deploy, wait_ready

    # The previous cell's trained model leaves the app before this one trains: its engine's memory (KV cache)
    # next to the Train workers got them OOM-killed on a 24 GB machine.
    deploy(cfg, log=log)
    wait_ready(cfg, log=log)
    try:
        plan_ = prepare(ccfg, pairs_dir, log=log)
    except TrainDataError as exc:  # e.g. no pair of this side: the cell is recorded as not trainable
        log(f"[pbt] {cell.name}: not trained: {exc}")
        return {**record, "complete": True, "skipped": str(exc)}
    metrics = train(ccfg, pairs_dir, log=log, plan=plan_)
    with trained_endpoint(ccfg, log) as (trained_url, tcfg):
        done = evaluate_suites(cfg, cell.name, trained_url, TRAINED_ROLE, tcfg.serve, trained_seats(cfg, tcfg),
                               suites=suites(cfg), log=log, **where)
    merged = ccfg.run_dir / "merged"
    if merged.is_dir():  # a merged copy per cell would fill the disk (8B: 16 GB each); the adapter stays
        shutil.rmtree(merged)
    return {**record, "complete": True, "suites": sorted(done), "train": {
        k: metrics.get(k) for k in ("global_step", "run_name", "selected", "selected_step", "train_loss")}}


def format_plan(cfg: PBTConfig, verdicts: list[tuple[Cell, str]]) -> str:
    lines = [f"[pbt] {experiment_dir(cfg)}: {len(verdicts)} cells ({', '.join(cfg.experiment.conditions)}; seeds "
             f"{', '.join(map(str, cfg.experiment.seeds))}); suites {', '.join(suites(cfg))}"]
    lines += [f"    {cell.name:<22} {verdict}" for cell, verdict in verdicts]
    return "\n".join(lines)


def run(cfg: PBTConfig, log=print, dry_run: bool = False) -> int:
    """Grow and mine (as `pbt run`), write each condition's data, run every cell that is not done, then write
    the experiment's table and report."""
    check(cfg)
    if dry_run:
        log(format_plan(cfg, plan(cfg)))
        return 0
    from pbt_ray.evaluation.experiment_report import write_experiment_report
    from pbt_ray.loop import debater_endpoint, grow_and_mine
    from pbt_ray.runtime import ray_cluster

    ok = True
    with ray_cluster(cfg, log=log), debater_endpoint(cfg, log=log) as url:
        ok = grow_and_mine(cfg, url, log)
        data = condition_data(cfg, log)
        test_ids = _test_ids(cfg)
        verdicts = plan(cfg, data)
        log(format_plan(cfg, verdicts))
        for i, (cell, verdict) in enumerate(verdicts, 1):
            if verdict == "done":
                continue
            log(f"\n[pbt] ===== cell {i} of {len(verdicts)}: {cell.name} =====")
            fp = cell_fingerprint(cfg, cell, data, test_ids)
            _record_cell(cell_config(cfg, cell), {"cell": cell.name, "fingerprint": fp, "complete": False})
            _record_cell(cell_config(cfg, cell), _run_cell(cfg, cell, url, data, fp, log))
            from pbt_ray.storage import push_run

            push_run(cfg, log)
    write_experiment_report(cfg, log=log)
    return 0 if ok else 1
