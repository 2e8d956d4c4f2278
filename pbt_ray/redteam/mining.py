"""Training data from bouts (RECIPES.md §1): judge SFT rows and attacker DPO pairs.

Judge: every oracle-labelled prompt with its label as the verdict to learn; prompts that fooled the judge weigh
more, and earlier rounds' rows are replayed so the judge does not forget them. Attacker: DPO pairs on one attacker
prompt (seed item x target class x round): chosen = on target, fooled the judge and novel; rejected = off target
first (a prompt of the other class "fooling" the judge is reward hacking, not success; so is one whose class the
oracle cannot confirm), then caught. A bout without a trusted label is never judge data.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from pbt_ray.redteam.bouts import Bout


@dataclass(frozen=True)
class JudgeRow:
    prompt: str
    label: str
    weight: float
    bout_id: str
    round: int
    fooled: bool


@dataclass(frozen=True)
class AttackerPair:
    seed_id: str
    target_class: str
    round: int
    chosen: str
    rejected: str
    chosen_bout: str
    rejected_bout: str
    rejected_because: str  # off_target | caught


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def judge_rows(bouts: list[Bout], earlier: list[JudgeRow] = (), fooled_weight: float = 3.0,
               replay_fraction: float = 1.0, seed: int = 12) -> list[JudgeRow]:
    """This round's labelled prompts (one row per distinct prompt; a fooling one weighs ``fooled_weight``) plus a
    seeded ``replay_fraction`` of the earlier rows whose prompts are not repeated here."""
    rows: dict[str, JudgeRow] = {}
    for bout in sorted(bouts, key=lambda b: b.bout_id):
        if bout.oracle_label is None:  # no trusted label: nothing to teach the judge
            continue
        key = _norm(bout.prompt)
        row = JudgeRow(bout.prompt, bout.oracle_label, fooled_weight if bout.fooled else 1.0, bout.bout_id,
                       bout.round, bout.fooled)
        if key not in rows or row.weight > rows[key].weight:
            rows[key] = row
    old = [r for r in earlier if _norm(r.prompt) not in rows]
    replayed = random.Random(seed).sample(old, round(len(old) * replay_fraction)) if old else []
    return list(rows.values()) + sorted(replayed, key=lambda r: (r.round, r.bout_id))


def balance_classes(rows: list[JudgeRow]) -> list[JudgeRow]:
    """The rows with weights scaled so both labels weigh the same in total (the minority class up-weighted), so
    the judge cannot learn to answer one word (a one-class judge was measured: round 2 of a local run without this
    said 'acceptable' to every prompt). The authors' prototype added a benign prompt per round for the same reason."""
    totals = {label: sum(r.weight for r in rows if r.label == label) for label in {r.label for r in rows}}
    if len(totals) < 2:
        return list(rows)
    top = max(totals.values())
    return [JudgeRow(r.prompt, r.label, round(r.weight * top / totals[r.label], 3), r.bout_id, r.round, r.fooled)
            for r in rows]


def attacker_pairs(bouts: list[Bout]) -> list[AttackerPair]:
    """DPO pairs on the same attacker prompt; a group with no success or no failure gives none."""
    groups: dict[tuple[str, str, int], list[Bout]] = {}
    for bout in bouts:
        groups.setdefault((bout.seed_id, bout.target_class, bout.round), []).append(bout)
    pairs = []
    for (seed_id, target, k), group in sorted(groups.items()):
        group.sort(key=lambda b: b.bout_id)
        chosen = [b for b in group if b.on_target and b.fooled and not b.near_duplicate]
        rejected = ([(b, "off_target") for b in group if not b.on_target]
                    + [(b, "caught") for b in group if b.on_target and b.caught])
        for good, (bad, why) in zip(chosen, rejected):
            pairs.append(AttackerPair(seed_id, target, k, good.prompt, bad.prompt, good.bout_id, bad.bout_id, why))
    return pairs


def mining_stats(bouts: list[Bout], rows: list[JudgeRow], pairs: list[AttackerPair]) -> dict[str, Any]:
    return {"bouts": len(bouts), "on_target": sum(b.on_target for b in bouts),
            "label_unknown": sum(b.oracle_label is None for b in bouts), "fooled": sum(b.fooled for b in bouts),
            "unparsed_verdicts": sum(b.judge_verdict is None for b in bouts),
            "near_duplicates": sum(b.near_duplicate for b in bouts), "judge_rows": len(rows),
            "judge_rows_replayed": sum(r.round < max((b.round for b in bouts), default=0) for r in rows),
            "attacker_pairs": len(pairs),
            "rejected_off_target": sum(p.rejected_because == "off_target" for p in pairs)}


# ---- files -----------------------------------------------------------------------------------------------------

def read_rows(path) -> list[JudgeRow]:
    """The judge rows a round trained on (``judge/data/rows.jsonl``: its own and the ones it replayed)."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        return []
    return [JudgeRow(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def write_training_data(round_dir, rows: list[JudgeRow], pairs: list[AttackerPair], seeds: dict[str, str]) -> None:
    """Judge SFT records (``judge/data/sft/train.parquet``: the judge prompt, the label as the one-word completion,
    a row repeated ``weight`` times once the classes are balanced) with the rows themselves (``rows.jsonl``, replayed by the next round), and the
    attacker's DPO pairs (``attacker/data/pairs/train.parquet``: the attacker prompt of the seed twin and target,
    the chosen and rejected rewrites), in TRL's conversational format."""
    import json
    import os
    from dataclasses import asdict
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pbt_ray.redteam.prompts import attacker_messages, judge_messages

    def write(table_rows: list[dict], path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(pa.Table.from_pylist(table_rows), tmp)
        os.replace(tmp, path)

    def assistant(text: str) -> list[dict]:
        return [{"role": "assistant", "content": text}]

    root = Path(round_dir)
    sft = [{"prompt": judge_messages(r.prompt), "completion": assistant(r.label), "bout_id": r.bout_id}
           for r in balance_classes(rows) for _ in range(max(1, round(r.weight)))]
    write(sft, root / "judge" / "data" / "sft" / "train.parquet")
    (root / "judge" / "data" / "rows.jsonl").write_text("".join(json.dumps(asdict(r)) + "\n" for r in rows))
    pair_dir = root / "attacker" / "data" / "pairs"
    if pairs:
        write([{"prompt": attacker_messages(seeds[p.seed_id], p.target_class), "chosen": assistant(p.chosen),
                "rejected": assistant(p.rejected), "seed_id": p.seed_id, "rejected_because": p.rejected_because}
               for p in pairs], pair_dir / "train.parquet")
    elif (pair_dir / "train.parquet").exists():  # an earlier attempt's pairs are not this round's
        (pair_dir / "train.parquet").unlink()
