"""The recipe's items: contrast pairs (seeds of the bouts, and the judge's held-out and hard sets) and the transfer
set, from the bundled files or a JSONL file of the same shape; split into train and held-out pairs once, seeded."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pbt_ray.redteam.bouts import CLASSES

BUNDLED = {"bundled:contrast": "redteam_contrast.jsonl", "bundled:transfer": "redteam_transfer.jsonl"}


class RedteamDataError(ValueError):
    """A seed or transfer file cannot be used; the message names the file and the line."""


@dataclass(frozen=True)
class Item:
    """One labelled prompt: a twin of a contrast pair, or a transfer comment."""

    id: str
    pair: str
    text: str
    label: str  # problematic | acceptable
    contentious: bool = False


def _lines(source: str) -> tuple[list[str], str]:
    if source in BUNDLED:
        return resources.files("pbt_ray.data").joinpath(BUNDLED[source]).read_text().splitlines(), source
    path = Path(source).expanduser()
    if not path.is_file():
        raise RedteamDataError(f"{source}: no such file (or use {' / '.join(BUNDLED)})")
    return path.read_text().splitlines(), str(path)


def _records(source: str, fields: tuple[str, ...]) -> list[tuple[int, dict]]:
    lines, origin = _lines(source)
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise RedteamDataError(f"{origin}, line {number}: not JSON ({exc.msg})") from None
        missing = [f for f in fields if not isinstance(row, dict) or not str(row.get(f) or "").strip()]
        if missing:
            raise RedteamDataError(f"{origin}, line {number}: missing or empty {', '.join(missing)}")
        out.append((number, row))
    if not out:
        raise RedteamDataError(f"{origin}: no items")
    return out


def _load_hub(name: str, config: str | None, split: str, limit: int | None = None):
    try:
        import datasets

        return datasets.load_dataset(name, config, split=split if limit is None else f"{split}[:{limit}]")
    except Exception as exc:  # offline, gated, misspelt: one actionable line
        raise RedteamDataError(f"could not load the Hugging Face dataset {name} ({config}, {split}): "
                               f"{type(exc).__name__}: {str(exc)[:200]}; without a hub, export it to a local JSONL "
                               "file of the bundled shape") from None


def _hub_pairs(spec: str) -> list[tuple[Item, Item]]:
    """``hf:JailbreakBench/JBB-Behaviors[:behaviors]``: its harmful and benign splits, paired by row (the benign
    behaviours were written to match the harmful ones topic by topic); the text is the behaviour's Goal."""
    name, _, config = spec.partition(":")
    harmful, benign = (_load_hub(name, config or "behaviors", split) for split in ("harmful", "benign"))
    if len(harmful) != len(benign):
        raise RedteamDataError(f"hf:{spec}: {len(harmful)} harmful and {len(benign)} benign rows cannot be paired")
    pairs = []
    for i, (bad, good) in enumerate(zip(harmful, benign)):
        pid = f"{name.split('/')[-1]}-{i:03d}"
        pairs.append((Item(f"{pid}-a", pid, str(good["Goal"]).strip(), "acceptable"),
                      Item(f"{pid}-p", pid, str(bad["Goal"]).strip(), "problematic")))
    return pairs


TEXT_COLUMNS = ("user_input", "text", "comment_text", "prompt")
LABEL_COLUMNS = ("toxicity", "toxic", "label")


def _hub_transfer(spec: str) -> list[Item]:
    """``hf:<dataset>[:<config>[:<split>]]`` of labelled comments (lmsys/toxic-chat, google/civil_comments): the
    first of TEXT_COLUMNS is the text, the first of LABEL_COLUMNS the label (>= 0.5: problematic)."""
    name, config, split = (spec.split(":") + ["", ""])[:3]
    rows = _load_hub(name, config or None, split or "test")
    columns = set(rows.column_names) if hasattr(rows, "column_names") else set(rows[0]) if len(rows) else set()
    text = next((c for c in TEXT_COLUMNS if c in columns), None)
    label = next((c for c in LABEL_COLUMNS if c in columns), None)
    if text is None or label is None:
        raise RedteamDataError(f"hf:{spec}: no text column ({', '.join(TEXT_COLUMNS)}) or label column "
                               f"({', '.join(LABEL_COLUMNS)}); it has {', '.join(sorted(columns))}")
    return [Item(f"{name.split('/')[-1]}-{i:05d}", f"{name.split('/')[-1]}-{i:05d}", str(row[text]).strip(),
                 "problematic" if float(row[label]) >= 0.5 else "acceptable") for i, row in enumerate(rows)]


def contrast_pairs(source: str) -> list[tuple[Item, Item]]:
    """(acceptable twin, problematic twin) per pair, in file order (``hf:`` sets: :func:`_hub_pairs`)."""
    if source.startswith("hf:"):
        return _hub_pairs(source[3:])
    pairs, seen = [], set()
    for number, row in _records(source, ("id", "acceptable", "problematic")):
        if row["id"] in seen:
            raise RedteamDataError(f"{source}, line {number}: id {row['id']} repeated")
        seen.add(row["id"])
        contentious = bool(row.get("contentious", False))
        pairs.append((Item(f"{row['id']}-a", row["id"], row["acceptable"].strip(), "acceptable", contentious),
                      Item(f"{row['id']}-p", row["id"], row["problematic"].strip(), "problematic")))
    return pairs


def transfer_items(source: str) -> list[Item]:
    if source.startswith("hf:"):
        return _hub_transfer(source[3:])
    items = []
    for number, row in _records(source, ("id", "text", "label")):
        if row["label"] not in CLASSES:
            raise RedteamDataError(f"{source}, line {number}: label {row['label']!r} is not one of {', '.join(CLASSES)}")
        items.append(Item(row["id"], row["id"], row["text"].strip(), row["label"]))
    return items


def split(pairs: list[tuple[Item, Item]], held_out_fraction: float, seed: int) -> tuple[list, list]:
    """(train pairs, held-out pairs): a seeded shuffle, the first ``held_out_fraction`` held out (at least one)."""
    order = list(pairs)
    random.Random(seed).shuffle(order)
    cut = max(1, round(len(order) * held_out_fraction))
    return sorted(order[cut:], key=lambda p: p[0].pair), sorted(order[:cut], key=lambda p: p[0].pair)
