"""The canonical mining rule (PBT_SPEC.md §2.12): one tree in, its preference pairs out. Pure.

The unit is a persuasion turn P of the persuader whose parent G is the persuadee's answer and whose
children are the persuadee's replies (one resist- and one accept-instructed in the paper's shape):

* **resist**: G correct, P incorrect -> chosen = a correct reply, rejected = an incorrect one;
* **accept**: G incorrect, P correct -> chosen = a correct reply, rejected = an incorrect one;
* **third_answer**: G and P both incorrect but a reply correct: labelled on its own, never trained on;
* **alias_mismatch**: any answer involved is a near miss of a gold alias ("Milton" for "John Milton"),
  where exact matching may have mislabelled the pair: labelled for review, never trained on.

Answers are the tree's resolved answers (Agree takes the partner's latest answer, Disagree keeps the
speaker's previous one, NONE is no answer and incorrect), judged by the project's one matching rule
(:func:`pbt_ray.answers.is_correct`). Every candidate that yields no pair gets a counted reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pbt_ray.answers import is_correct, normalize_answer
from pbt_ray.dialogue.tree import Node, Tree, TreeSchemaError, validate
from pbt_ray.preferences.pairs import (
    ACCEPT, ALIAS_MISMATCH, RESIST, THIRD_ANSWER, Pair, Reply, prompt_messages, reply_message,
)


@dataclass
class Drop:
    reason: str
    tree_id: str
    node: int | None = None
    detail: str = ""


@dataclass
class MineResult:
    pairs: list[Pair] = field(default_factory=list)
    drops: list[Drop] = field(default_factory=list)
    candidates: int = 0  # persuasion turns looked at
    trees: int = 0  # trees read (broken ones included)


def near_miss(answer: str | None, gold: list[str]) -> bool:
    """True when ``answer`` is not a gold alias but its words are a strict subset or superset of one's
    ("milton" vs "john milton"): exact matching calls it wrong, a person might not. An answer equal to any
    alias is right, never a near miss of another (nested aliases: "Milton" with ["John Milton", "Milton"])."""
    if answer is None or is_correct(answer, gold):
        return False
    words = set(normalize_answer(answer).split())
    if not words:
        return False
    for alias in gold:
        alias_words = set(normalize_answer(alias).split())
        if alias_words and words != alias_words and (words < alias_words or alias_words < words):
            return True
    return False


def check_minable(tree: Tree) -> None:
    """What mining needs beyond the schema: a valid structure, gold answers, known roles."""
    validate(tree)
    if not tree.gold or not any(str(g).strip() for g in tree.gold):
        raise TreeSchemaError(f"tree {tree.tree_id}: no gold answers")
    if tree.roles.get("persuader") not in ("A", "B"):
        raise TreeSchemaError(f"tree {tree.tree_id}: roles.persuader is {tree.roles.get('persuader')!r}, not A or B")


def mine_tree(tree: Tree, *, third_answer: str = "label") -> MineResult:
    """Every pair of ``tree`` under the canonical rule, and a reason for every candidate without one."""
    result = MineResult(trees=1)
    try:
        check_minable(tree)
    except TreeSchemaError as exc:
        result.drops.append(Drop("broken_tree", tree.tree_id, detail=str(exc)))
        return result
    if tree.status != "complete":
        result.drops.append(Drop("failed_tree", tree.tree_id, detail=tree.error or ""))
        return result
    if tree.mode != "train":
        result.drops.append(Drop("eval_mode_tree", tree.tree_id, detail="evaluation dialogues have one branch"))
        return result

    persuader = tree.roles["persuader"]
    persuadee = "B" if persuader == "A" else "A"
    by_id = {n.id: n for n in tree.nodes}
    units = [n for n in tree.nodes if n.speaker == persuader and n.role == "persuader"
             and n.parent in by_id and by_id[n.parent].speaker == persuadee]
    if not units:
        result.drops.append(Drop("no_persuasion_turn", tree.tree_id,
                                 detail="the agents agreed (or the tree stopped) before any persuasion turn"))
    for p in units:
        result.candidates += 1
        _mine_unit(tree, by_id[p.parent], p, persuadee, third_answer, result)
    return result


def _correct(tree: Tree, node: Node) -> bool:
    return is_correct(node.answer, tree.gold, tree.choices)


def _mine_unit(tree: Tree, g: Node, p: Node, persuadee: str, third_answer: str, result: MineResult) -> None:
    replies = [c for c in tree.children(p.id) if c.speaker == persuadee]
    drop = lambda reason, detail="": result.drops.append(Drop(reason, tree.tree_id, p.id, detail))  # noqa: E731
    if len(replies) < 2:
        drop("persuader_agreed" if p.agree else "fewer_than_two_replies")
        return
    g_ok, p_ok = _correct(tree, g), _correct(tree, p)
    if g_ok and p_ok:
        drop("no_persuasion_both_correct")
        return
    right = [r for r in replies if _correct(tree, r)]
    wrong = [r for r in replies if not _correct(tree, r)]
    if g_ok:
        kind = RESIST
    elif p_ok:
        kind = ACCEPT
    elif right:
        if third_answer == "drop":
            drop("third_answer_dropped")
            return
        kind = THIRD_ANSWER
    else:
        drop("both_wrong_no_correct_reply")
        return
    if not right:
        drop(f"{kind}_no_correct_reply")
        return
    if not wrong:
        drop(f"{kind}_no_incorrect_reply")
        return
    if any(near_miss(n.answer, tree.gold) for n in (g, p, *replies)):
        kind = ALIAS_MISMATCH
    path = [(n.speaker, n.text) for n in tree.path(p.id)]
    prompt = prompt_messages(tree.question, tree.choices, path, persuadee)
    persuader = p.speaker
    for chosen in right:
        for rejected in wrong:
            result.pairs.append(make_pair(
                tree, kind, "canonical", prompt, p, persuadee, g.answer, p.answer,
                Reply(chosen.id, chosen.text, chosen.family, chosen.answer),
                Reply(rejected.id, rejected.text, rejected.family, rejected.answer),
                depth=chosen.depth, persuader=persuader,
            ))


def make_pair(tree: Tree, kind: str, rule: str, prompt: list[dict[str, str]], p: Node, persuadee: str,
              before: str | None, persuader_answer: str | None, chosen: Reply, rejected: Reply, *, depth: int,
              persuader: str, scores: tuple[float, float] | None = None) -> Pair:
    return Pair(
        type=kind, rule=rule, tree_id=tree.tree_id, question_id=tree.question_id, question=tree.question,
        gold=list(tree.gold), choices=tree.choices, prompt=prompt,
        chosen=reply_message(chosen.text), rejected=reply_message(rejected.text),
        style=p.family, depth=depth, parent_node=p.id, chosen_node=chosen.node, rejected_node=rejected.node,
        chosen_family=chosen.family, rejected_family=rejected.family,
        persuadee_before=before, persuader_answer=persuader_answer,
        chosen_answer=chosen.answer, rejected_answer=rejected.answer,
        persuader_model=tree.models.get(persuader, ""), persuadee_model=tree.models.get(persuadee, ""),
        chosen_score=None if scores is None else scores[0], rejected_score=None if scores is None else scores[1],
        source=tree.source,
    )
