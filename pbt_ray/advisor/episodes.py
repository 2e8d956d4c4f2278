"""Episodes (RECIPES.md section 2): per question, the receiver's answers without a signal and with each of the
advisor's K signals, and the signal's utility = accuracy with it - accuracy without it (per receiver, then
averaged over receivers). Parquet with a versioned schema, like trees and bouts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

EPISODE_SCHEMA_VERSION = 1
NO_SIGNAL = ""  # the signal of the receiver's baseline answers


@dataclass
class Episode:
    """One receiver answering one question ``n`` times with one signal (``NO_SIGNAL``: the baseline)."""

    episode_id: str
    round: int
    question_id: str
    gold: list[str]
    signal_id: str  # "none" for the baseline
    signal: str
    advisor: str | None
    receiver: str
    receiver_prompt: str
    replies: list[str]
    answers: list[str | None]
    correct: list[bool]
    states_answer: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (len(self.replies) == len(self.answers) == len(self.correct)):
            raise ValueError(f"episode {self.episode_id}: {len(self.replies)} replies, {len(self.answers)} answers, "
                             f"{len(self.correct)} scores")

    @property
    def accuracy(self) -> float | None:
        return sum(self.correct) / len(self.correct) if self.correct else None


def utilities(episodes: list[Episode]) -> dict[tuple[str, str], float]:
    """(question id, signal id) -> the signal's utility averaged over receivers: for each receiver, its accuracy
    with the signal minus its accuracy with no signal on that question. A receiver without a baseline on the
    question, or without answers, is left out (never counted as 0)."""
    base = {(e.question_id, e.receiver): e.accuracy for e in episodes if e.signal_id == "none"}
    per: dict[tuple[str, str], list[float]] = {}
    for e in episodes:
        if e.signal_id == "none":
            continue
        b = base.get((e.question_id, e.receiver))
        if b is None or e.accuracy is None:
            continue
        per.setdefault((e.question_id, e.signal_id), []).append(e.accuracy - b)
    return {key: sum(v) / len(v) for key, v in per.items()}


def episode_schema():
    import pyarrow as pa

    return pa.schema([
        ("episode_id", pa.string()), ("round", pa.int32()), ("question_id", pa.string()), ("gold", pa.list_(pa.string())),
        ("signal_id", pa.string()), ("signal", pa.string()), ("advisor", pa.string()), ("receiver", pa.string()),
        ("receiver_prompt", pa.string()), ("replies", pa.list_(pa.string())), ("answers", pa.list_(pa.string())),
        ("correct", pa.list_(pa.bool_())), ("states_answer", pa.bool_()), ("extra", pa.string()),
        ("accuracy", pa.float64()),
    ], metadata={"pbt_episode_schema_version": str(EPISODE_SCHEMA_VERSION)})


def write_episodes(episodes: list[Episode], path) -> None:
    import json
    import os
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{**asdict(e), "extra": json.dumps(e.extra, sort_keys=True), "accuracy": e.accuracy} for e in episodes]
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=episode_schema()), tmp)
    os.replace(tmp, path)


def read_episodes(path) -> list[Episode]:
    import json

    import pyarrow.parquet as pq

    table = pq.read_table(path)
    version = (table.schema.metadata or {}).get(b"pbt_episode_schema_version", b"?").decode()
    if version != str(EPISODE_SCHEMA_VERSION):
        raise ValueError(f"{path}: episode schema version {version}, this pbt-ray reads {EPISODE_SCHEMA_VERSION}")
    return [Episode(**{**{k: v for k, v in row.items() if k != "accuracy"}, "extra": json.loads(row["extra"] or "{}")})
            for row in table.to_pylist()]
