"""Training data from bouts (RECIPES.md §1): judge SFT rows and attacker DPO pairs.

Judge: every oracle-labelled prompt with its label as the verdict to learn; prompts that fooled the judge weigh
more, and earlier rounds' rows are replayed so the judge does not forget them. Attacker: DPO pairs on one attacker
prompt (seed item x target class x round): chosen = on target, fooled the judge and novel; rejected = off target
first (a prompt of the other class "fooling" the judge is reward hacking, not success), then caught.
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
        key = _norm(bout.prompt)
        row = JudgeRow(bout.prompt, bout.oracle_label, fooled_weight if bout.fooled else 1.0, bout.bout_id,
                       bout.round, bout.fooled)
        if key not in rows or row.weight > rows[key].weight:
            rows[key] = row
    old = [r for r in earlier if _norm(r.prompt) not in rows]
    replayed = random.Random(seed).sample(old, round(len(old) * replay_fraction)) if old else []
    return list(rows.values()) + sorted(replayed, key=lambda r: (r.round, r.bout_id))


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
    return {"bouts": len(bouts), "on_target": sum(b.on_target for b in bouts), "fooled": sum(b.fooled for b in bouts),
            "unparsed_verdicts": sum(b.judge_verdict is None for b in bouts),
            "near_duplicates": sum(b.near_duplicate for b in bouts), "judge_rows": len(rows),
            "judge_rows_replayed": sum(r.round < max((b.round for b in bouts), default=0) for r in rows),
            "attacker_pairs": len(pairs),
            "rejected_off_target": sum(p.rejected_because == "off_target" for p in pairs)}
