"""From mined pairs to training sets: question-level splits, balancing, SFT records. Pure and seeded.

* A question's split is a hash of its id and the seed (not file order, PBT_SPEC.md §7.19), so every
  pair of a question lands in one split and reruns over more trees keep earlier questions where they were.
* Balancing is per split (the reference balances dev and test too, §2.11): ``balanced`` takes N resist and
  N accept pairs with N the scarcer count; ``resist-only`` and ``accept-only`` take N of one type (the
  paper's ablations: equal per-type size, half the total); ``none`` keeps every resist and accept pair.
  Which N are taken is a seeded hash order, independent of the order pairs arrived in.
* The one-sided conditions are training conditions: their dev and test splits are the balanced ones (as the
  reference's dev/test sets, §2.11), so every condition is selected and evaluated on the same pairs of both
  sides, and "balanced accuracy" never silently means one side.
* Only resist and accept pairs are ever selected; other types stay in the candidates file.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

from pbt_ray.preferences.pairs import ACCEPT, RESIST, Pair

SPLITS = ("train", "dev", "test")
BALANCES = ("balanced", "resist-only", "accept-only", "none")


def _unit(seed: int, key: str) -> float:
    digest = hashlib.blake2b(f"{seed}|{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def split_of(question_id: str, seed: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> str:
    u = _unit(seed, f"split|{question_id}")
    if u < fractions[0]:
        return "train"
    return "dev" if u < fractions[0] + fractions[1] else "test"


@dataclass
class Selection:
    splits: dict[str, list[Pair]] = field(default_factory=dict)  # split -> selected pairs, shuffled
    available: dict[str, Counter] = field(default_factory=dict)  # split -> type -> count before balancing
    question_split: dict[str, str] = field(default_factory=dict)


def select(pairs: list[Pair], balance: str = "balanced", seed: int = 12,
           fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> Selection:
    if balance not in BALANCES:
        raise ValueError(f"balance must be one of {', '.join(BALANCES)}, got {balance!r}")
    out = Selection()
    by_split: dict[str, dict[str, list[Pair]]] = {s: {RESIST: [], ACCEPT: []} for s in SPLITS}
    for p in pairs:
        split = out.question_split.setdefault(p.question_id, split_of(p.question_id, seed, fractions))
        if p.type in (RESIST, ACCEPT):
            by_split[split][p.type].append(p)
    for split, kinds in by_split.items():
        out.available[split] = Counter({k: len(v) for k, v in kinds.items()})
        ordered = {k: sorted(v, key=lambda p: _unit(seed, p.pair_id)) for k, v in kinds.items()}
        n = min(len(ordered[RESIST]), len(ordered[ACCEPT]))
        rule = balance if split == "train" or balance == "none" else "balanced"
        chosen = {
            "balanced": ordered[RESIST][:n] + ordered[ACCEPT][:n],
            "resist-only": ordered[RESIST][:n],
            "accept-only": ordered[ACCEPT][:n],
            "none": ordered[RESIST] + ordered[ACCEPT],
        }[rule]
        out.splits[split] = sorted(chosen, key=lambda p: _unit(seed + 1, p.pair_id))
    return out


def sft_record(pair: Pair) -> dict:
    """TRL's conversational prompt-completion format: the SFT stage learns the chosen reply only
    (completion-only loss), rendered like the DPO prompt (the reference put it in a user turn, §7.11)."""
    return {"prompt": pair.prompt, "completion": pair.chosen, "type": pair.type, "pair_id": pair.pair_id,
            "question_id": pair.question_id, "tree_id": pair.tree_id}
