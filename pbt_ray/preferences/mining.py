"""`pbt mine`: trees on disk -> pair files, with Ray Data mapping one task per tree file.

Layout of the output directory::

    pairs/{train,dev,test}.parquet   the selected DPO pairs (TRL conversational preference format)
    sft/{train,dev,test}.parquet     the chosen replies of the same pairs (prompt-completion format)
    candidates.parquet               every mined pair of every type, with its split (for inspection)
    mine_stats.json                  counts per type, style and depth, every drop reason, broken trees

Load the pairs with ``datasets.load_dataset("parquet", data_files={"train": ".../pairs/train.parquet"})``.
Nothing is dropped without a counted reason: broken trees are listed with their file, line or id.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pbt_ray.config import MineConfig, PBTConfig
from pbt_ray.dialogue.tree import Tree, TreeSchemaError
from pbt_ray.preferences.canonical import Drop, MineResult, mine_tree
from pbt_ray.preferences.datasets import SPLITS, select, sft_record
from pbt_ray.preferences.pairs import ACCEPT, RESIST, Pair, from_row, pair_schema, to_row

STATS_FILE = "mine_stats.json"


class MineError(ValueError):
    """Mining cannot start (no trees, wrong format); the message says what to pass instead."""


def find_tree_files(path: str | Path, input_format: str = "auto") -> list[tuple[str, str]]:
    """(file, format) for a run directory, a trees directory, a Parquet file or a reference JSONL file."""
    path = Path(path).expanduser()
    if not path.exists():
        raise MineError(f"{path} does not exist; pass a run directory, a trees directory or a trees file (--trees)")
    if path.is_dir():
        root = path / "trees" if (path / "trees").is_dir() else path
        files = sorted(root.glob("*.parquet")) + sorted(root.glob("*.jsonl"))
    else:
        files = [path]
    out = []
    for f in files:
        fmt = input_format if input_format != "auto" else {".parquet": "ours", ".jsonl": "reference"}.get(f.suffix)
        if fmt is None:
            raise MineError(f"{f}: cannot tell the tree format from the suffix; pass --input-format ours|reference")
        out.append((str(f), fmt))
    if not out:
        raise MineError(f"no tree files (*.parquet, *.jsonl) in {path}; grow some with `pbt grow` first")
    return out


def _mine(tree: Tree, record: dict | None, mcfg: MineConfig) -> MineResult:
    if mcfg.rule == "canonical":
        return mine_tree(tree, third_answer=mcfg.third_answer)
    from pbt_ray.preferences.reference_rule import mine_slot_tree, slot_tree_from_record, slot_tree_from_tree

    if tree.status != "complete":
        return MineResult(trees=1, drops=[Drop("failed_tree", tree.tree_id, detail=tree.error or "")])
    try:
        slots = slot_tree_from_record(record, tree) if record is not None else slot_tree_from_tree(tree)
    except TreeSchemaError as exc:
        return MineResult(trees=1, drops=[Drop("broken_tree", tree.tree_id, detail=str(exc))])
    return mine_slot_tree(slots, slots=mcfg.reference_slots, gap=mcfg.reference_gap)


def _broken(where: str, exc: Exception) -> MineResult:
    return MineResult(trees=1, drops=[Drop("broken_tree", where, detail=str(exc))])


def mine_file(path: str, fmt: str, mcfg: MineConfig) -> dict[str, Any]:
    """Mine every tree of one file. A broken tree is a counted drop naming its file and id or line."""
    import pyarrow.parquet as pq

    from pbt_ray.dialogue.reference import read_reference_records
    from pbt_ray.dialogue.tree import from_row as tree_from_row

    results: list[MineResult] = []
    ids: list[str] = []  # every tree mined here, once: a tree written twice (a retried batch) is mined once

    def once(tree: Tree, record: dict | None) -> None:
        if tree.tree_id in ids:
            results.append(MineResult(trees=0, drops=[Drop("duplicate_tree", tree.tree_id, detail=path)]))
            return
        ids.append(tree.tree_id)
        results.append(_mine(tree, record, mcfg))

    if fmt == "ours":
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, never fatal for the others
            rows, results = [], [_broken(f"{path}", TreeSchemaError(f"not a readable Parquet file: {exc}"))]
        for i, row in enumerate(rows):
            try:
                tree = tree_from_row(row)
            except TreeSchemaError as exc:
                results.append(_broken(f"{path} row {i} ({row.get('tree_id', '?')})", exc))
                continue
            once(tree, None)
    else:
        for lineno, record, item in read_reference_records(path, source=os.path.basename(path)):
            if isinstance(item, TreeSchemaError):
                results.append(_broken(f"{path} line {lineno}", item))
            else:
                once(item, record)
    return {
        "path": path,
        "tree_ids": ids,
        "trees": sum(r.trees for r in results),
        "candidates": sum(r.candidates for r in results),
        "pairs": [to_row(p) for r in results for p in r.pairs],
        "drops": [vars(d) for r in results for d in r.drops],
    }


@dataclass
class MineSummary:
    files: int = 0
    trees: int = 0
    candidates: int = 0
    pairs: list[Pair] = field(default_factory=list)
    drops: list[dict] = field(default_factory=list)


def mine_files(files: list[tuple[str, str]], mcfg: MineConfig, use_ray: bool = True) -> MineSummary:
    """Mine all files, one Ray Data task per file (or in this process with ``use_ray=False``)."""
    if use_ray:
        import ray

        # One JSON payload per file: pair rows are nested lists of structs and some files yield none, which
        # Arrow cannot unify across blocks; a string column always can.
        ds = ray.data.from_items([{"path": p, "format": f} for p, f in files], override_num_blocks=len(files))
        ds = ds.map(lambda row: {"result": json.dumps(mine_file(row["path"], row["format"], mcfg))})
        per_file = [json.loads(row["result"]) for row in ds.take_all()]
    else:
        per_file = [mine_file(p, f, mcfg) for p, f in files]
    summary = MineSummary(files=len(files))
    seen: set[str] = set()
    for item in sorted(per_file, key=lambda r: r["path"]):
        again = set(item.get("tree_ids", [])) & seen  # already mined from an earlier file: counted, not mined twice
        seen.update(item.get("tree_ids", []))
        summary.trees += item["trees"] - len(again)
        summary.candidates += item["candidates"]
        summary.pairs += [from_row(r) for r in item["pairs"] if r["tree_id"] not in again]
        summary.drops += [d for d in item["drops"] if d.get("tree_id") not in again or d["reason"] == "duplicate_tree"]
        summary.drops += [{"reason": "duplicate_tree", "tree_id": t, "node": None, "detail": item["path"]}
                          for t in sorted(again)]
    return summary


def output_dir(cfg: PBTConfig, trees: str | None = None, out: str | None = None) -> Path:
    """Where the pairs go: ``out`` / ``mine.out`` if given; else the preferences of the run the trees came from
    (``<run>/preferences`` for a run directory, its ``trees/`` or a file in it; next to any other file), so
    mining another run's trees never overwrites the config's own run."""
    if out or cfg.mine.out:
        return Path(out or cfg.mine.out).expanduser()
    source = trees or cfg.mine.trees
    if source is None:
        return cfg.run_dir / "preferences"
    path = Path(source).expanduser()
    if path.is_dir():
        root = path.parent if path.name == "trees" and not (path / "trees").is_dir() else path
    else:
        root = path.parent.parent if path.parent.name == "trees" else path.parent
    return root / "preferences"


def mine(cfg: PBTConfig, *, trees: str | None = None, out: str | None = None, use_ray: bool = True,
         stance_check=None, log=print) -> dict[str, Any]:
    """The stage: find the trees, mine them, optionally check stances, select, write, report."""
    mcfg = cfg.mine
    trees_path = trees or mcfg.trees or str(cfg.run_dir)
    out_dir = output_dir(cfg, trees, out)
    files = find_tree_files(trees_path, mcfg.input_format)
    log(f"[pbt] mining {len(files)} tree file(s) from {trees_path} (rule: {mcfg.rule})")
    summary = mine_files(files, mcfg, use_ray=use_ray)
    broken = [d for d in summary.drops if d["reason"] == "broken_tree"]
    if broken and len(broken) >= summary.trees:  # nothing readable: empty pair files would replace the last good ones
        raise MineError(f"none of the {summary.trees} tree(s) in {trees_path} could be read, the first: "
                        f"{broken[0]['tree_id']}: {broken[0]['detail']}; {out_dir} is left as it was")
    if broken and mcfg.on_broken_tree == "fail":
        raise MineError(f"{len(broken)} broken tree(s), first: {broken[0]['tree_id']}: {broken[0]['detail']} "
                        "(mine.on_broken_tree=skip reports and skips them)")
    pairs = summary.pairs
    if stance_check is not None:  # async (pairs) -> (kept, [(pair, reason)]), see preferences/stance.py
        import asyncio

        log(f"[pbt] checking reply stances of {sum(p.type in (RESIST, ACCEPT) for p in pairs)} pairs")
        pairs, dropped = asyncio.run(stance_check(pairs))
        summary.drops += [{"reason": reason, "tree_id": p.tree_id, "node": p.parent_node, "detail": p.pair_id}
                          for p, reason in dropped]
    selection = select(pairs, mcfg.balance, mcfg.seed, tuple(mcfg.split_fractions))
    stats = _stats(summary, pairs, selection, mcfg, trees_path, out_dir)
    _write(out_dir, pairs, selection, stats)
    log(format_stats(stats))
    return stats


def _write(out_dir: Path, pairs: list[Pair], selection, stats: dict) -> None:
    """Each file written whole under a temporary name and renamed: a killed run leaves old or new files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def put_table(rows: list[dict], path: Path, schema=None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        table = pa.Table.from_pylist(rows, schema=schema) if rows or schema else pa.table({})
        pq.write_table(table, tmp)
        os.replace(tmp, path)

    put_table([to_row(p, selection.question_split.get(p.question_id)) for p in pairs],
              out_dir / "candidates.parquet", pair_schema())
    for split in SPLITS:
        chosen = selection.splits.get(split, [])
        put_table([to_row(p, split) for p in chosen], out_dir / "pairs" / f"{split}.parquet", pair_schema())
        put_table([sft_record(p) for p in chosen], out_dir / "sft" / f"{split}.parquet", _sft_schema())
    tmp = out_dir / f".{STATS_FILE}.tmp"
    tmp.write_text(json.dumps(stats, indent=2) + "\n")
    os.replace(tmp, out_dir / STATS_FILE)


def _sft_schema():
    import pyarrow as pa

    message = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    return pa.schema([("prompt", message), ("completion", message), ("type", pa.string()), ("pair_id", pa.string()),
                      ("question_id", pa.string()), ("tree_id", pa.string())])


def _stats(summary: MineSummary, pairs: list[Pair], selection, mcfg: MineConfig, trees_path: str, out_dir: Path) -> dict:
    by_type = Counter(p.type for p in pairs)
    by_style: dict[str, Counter] = {}
    by_depth: dict[str, Counter] = {}
    for p in pairs:
        by_style.setdefault(p.style, Counter())[p.type] += 1
        by_depth.setdefault(str(p.depth), Counter())[p.type] += 1
    reasons = Counter(d["reason"] for d in summary.drops)
    return {
        "trees_path": str(trees_path), "out": str(out_dir),
        "config": mcfg.model_dump(mode="json"),
        "files": summary.files, "trees": summary.trees, "candidates": summary.candidates,
        "pairs_by_type": dict(sorted(by_type.items())),
        "pairs_by_style": {k: dict(v) for k, v in sorted(by_style.items())},
        "pairs_by_depth": {k: dict(v) for k, v in sorted(by_depth.items())},
        "drops_by_reason": dict(reasons.most_common()),
        "broken_trees": [{"where": d["tree_id"], "error": d["detail"]} for d in summary.drops if d["reason"] == "broken_tree"],
        "available": {s: dict(c) for s, c in selection.available.items()},
        "selected": {s: dict(Counter(p.type for p in ps)) for s, ps in selection.splits.items()},
        "questions_per_split": dict(Counter(selection.question_split.values())),
    }


def format_stats(stats: dict) -> str:
    lines = [f"[pbt] {stats['trees']} trees in {stats['files']} file(s): {stats['candidates']} candidates "
             f"({'persuasion turns' if stats['config']['rule'] == 'canonical' else 'sibling pairs'}), "
             f"{sum(stats['pairs_by_type'].values())} pairs mined"]
    types = stats["pairs_by_type"]
    lines.append("  pairs by type:  " + (", ".join(f"{k} {v}" for k, v in types.items()) or "none"))
    for title, table in (("by persuasion style", stats["pairs_by_style"]), ("by reply depth", stats["pairs_by_depth"])):
        if table:
            cells = [f"{key} {row.get(RESIST, 0)}/{row.get(ACCEPT, 0)}" for key, row in table.items()]
            lines.append(f"  resist/accept {title}:  " + ", ".join(cells))
    if stats["drops_by_reason"]:
        lines.append("  no pair, by reason:")
        lines += [f"    {reason:<34} {count}" for reason, count in stats["drops_by_reason"].items()]
    for b in stats["broken_trees"][:10]:
        lines.append(f"  broken: {b['where']}: {b['error']}")
    balance = stats["config"]["balance"]
    sel = ", ".join(f"{s} {v.get(RESIST, 0)} resist + {v.get(ACCEPT, 0)} accept" for s, v in stats["selected"].items())
    avail = ", ".join(f"{s} {v.get(RESIST, 0)}/{v.get(ACCEPT, 0)}" for s, v in stats["available"].items())
    lines.append(f"  selected ({balance}, seed {stats['config']['seed']}): {sel}")
    lines.append(f"  available resist/accept per split: {avail}; questions per split: {stats['questions_per_split']}")
    lines.append(f"[pbt] pairs in {stats['out']}/pairs/{{train,dev,test}}.parquet; all candidates in "
                 f"{stats['out']}/candidates.parquet; stats in {stats['out']}/{STATS_FILE}")
    if not any(stats["selected"].values()) or not sum(sum(v.values()) for v in stats["selected"].values()):
        lines.append("[pbt] warning: no trainable pairs selected - grow more trees, or try --balance none "
                     "when one type is missing")
    return "\n".join(lines)
