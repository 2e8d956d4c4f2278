"""Advisor training data from episodes (RECIPES.md section 2): DPO pairs on one advisor prompt (the question),
chosen = the signal of highest utility, rejected = the lowest, kept only when the gap reaches ``min_gap`` (utility
is averaged over receivers first, so a signal has to help the receivers in general, not one of them); SFT rows
from the signals with positive utility. Ties for the top or the bottom are broken by signal id, so the same
episodes give the same pairs."""

from __future__ import annotations

from dataclasses import dataclass

from pbt_ray.advisor.episodes import Episode, utilities


@dataclass(frozen=True)
class AdvisorPair:
    question_id: str
    chosen: str
    rejected: str
    chosen_utility: float
    rejected_utility: float


@dataclass(frozen=True)
class AdvisorSFTRow:
    question_id: str
    signal: str
    utility: float


def _signals(episodes: list[Episode]) -> dict[tuple[str, str], str]:
    return {(e.question_id, e.signal_id): e.signal for e in episodes if e.signal_id != "none"}


def advisor_pairs(episodes: list[Episode], min_gap: float = 0.25) -> list[AdvisorPair]:
    util, text = utilities(episodes), _signals(episodes)
    by_question: dict[str, list[tuple[str, float]]] = {}
    for (qid, sid), u in util.items():
        by_question.setdefault(qid, []).append((sid, u))
    pairs = []
    for qid, scored in sorted(by_question.items()):
        if len(scored) < 2:
            continue
        best = min(scored, key=lambda s: (-s[1], s[0]))
        worst = min(scored, key=lambda s: (s[1], s[0]))
        if best[1] - worst[1] >= min_gap and text[(qid, best[0])] != text[(qid, worst[0])]:
            pairs.append(AdvisorPair(qid, text[(qid, best[0])], text[(qid, worst[0])], best[1], worst[1]))
    return pairs


def advisor_sft_rows(episodes: list[Episode]) -> list[AdvisorSFTRow]:
    util, text = utilities(episodes), _signals(episodes)
    return [AdvisorSFTRow(qid, text[(qid, sid)], u) for (qid, sid), u in sorted(util.items()) if u > 0]
