"""PBT_SPEC.md §8: every fixture in every mode, built as our trees and in the reference layout."""

from __future__ import annotations

import pytest

from pbt_ray.answers import normalize_answer
from pbt_ray.dialogue.reference import tree_from_reference, tree_to_reference
from pbt_ray.preferences.canonical import mine_tree
from pbt_ray.preferences.pairs import ACCEPT, ALIAS_MISMATCH, RESIST, THIRD_ANSWER
from pbt_ray.preferences.reference_rule import mine_slot_tree, slot_tree_from_record, slot_tree_from_tree

from .pbt_fixtures import AGREE, fixture_tree

TRAINABLE = (RESIST, ACCEPT)


def oracle_judge(_question: str, a: str, b: str) -> bool:
    """§8: 'agree' iff the normalized strings are equal or one is the Agree token."""
    return normalize_answer(a) == normalize_answer(b) or "agree" in (a.strip().lower(), b.strip().lower())


def oracle_stance(text: str) -> str:
    """§8: a reply agrees iff it says "you're right" (our bare agreement does)."""
    return "agree" if "you're right" in text.lower() else "disagree"


def both_layouts(name):
    """The fixture as our tree, and as a reference JSONL record read back (slots exactly as written)."""
    ours = fixture_tree(name)
    record = tree_to_reference(ours)
    imported = tree_from_reference(record)
    return [("ours", ours, slot_tree_from_tree(ours)), ("reference", imported, slot_tree_from_record(record, imported))]


def trainable(pairs):
    return [p for p in pairs if p.type in TRAINABLE]


def l2_ids(tree):
    return sorted(n.id for n in tree.nodes if n.depth == 2)


REFERENCE_L2_IDS = [3, 6, 9, 13, 16, 19]  # §8: the persuasion turns in the reference's depth-first ids


def check_six(pairs, tree, kind, chosen_family, scores=None):
    assert len(pairs) == 6, [(p.type, p.parent_node) for p in pairs]
    assert {p.type for p in pairs} == {kind}
    assert {p.chosen_family for p in pairs} == {chosen_family}
    if scores is not None:
        assert {(p.chosen_score, p.rejected_score) for p in pairs} == {scores}
    expected_parents = tree if isinstance(tree, list) else l2_ids(tree)
    assert sorted(p.parent_node for p in pairs) == expected_parents


# (fixture, kind, chosen family, I> scores or None when I> yields nothing, I>= scores, canonical result)
EXPECTED = {
    "F1": dict(i_gt=(RESIST, "rp", (1, 0)), i_ge=(RESIST, "rp", (1, 0)), c=(RESIST, "rp")),
    "F2": dict(i_gt=None, i_ge=(ACCEPT, "ap", (2, 1)), c=(ACCEPT, "ap")),
    "F3": dict(i_gt=None, i_ge=None, c=None),
    "F4": dict(i_gt=None, i_ge=None, c=None),
    "F5": dict(i_gt=(ACCEPT, "ap", (1, 0)), i_ge=(ACCEPT, "ap", (1, 0)), c=None),
    "F6": dict(i_gt=(RESIST, "rp", (1, 0)), i_ge=(RESIST, "rp", (1, 0)), c=(RESIST, "rp")),
    "F7": dict(i_gt=None, i_ge=(ACCEPT, "ap", (2, 1)), c=(ACCEPT, "ap")),
    "F8": dict(i_gt=(ACCEPT, "ap", (2, 0)), i_ge=(ACCEPT, "ap", (2, 0)), c=None),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_canonical_rule(name):
    for layout, tree, _ in both_layouts(name):
        result = mine_tree(tree)
        expected = EXPECTED[name]["c"]
        if expected is None:
            assert trainable(result.pairs) == [], (layout, result.pairs)
        else:
            check_six(result.pairs, tree, *expected)
            for p in result.pairs:  # chosen is right, rejected wrong, both answer the same persuasion turn
                node = {n.id: n for n in tree.nodes}
                assert node[p.chosen_node].correct and not node[p.rejected_node].correct
                assert node[p.chosen_node].parent == node[p.rejected_node].parent == p.parent_node


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("gap,key", [(">", "i_gt"), (">=", "i_ge")])
def test_reference_rule_agent_slots(name, gap, key):
    for layout, tree, slots in both_layouts(name):
        result = mine_slot_tree(slots, slots="agent", gap=gap)
        expected = EXPECTED[name][key]
        if expected is None:
            assert trainable(result.pairs) == [], (layout, [(p.type, p.chosen_score) for p in result.pairs])
        else:
            check_six(trainable(result.pairs), l2_ids(tree) if layout == "ours" else REFERENCE_L2_IDS, *expected)


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("gap", [">", ">="])
@pytest.mark.parametrize("with_judge", [False, True])
def test_reference_rule_as_published(name, gap, with_judge):
    judge = dict(judge=oracle_judge, stance=oracle_stance) if with_judge else {}
    for layout, tree, slots in both_layouts(name):
        pairs = trainable(mine_slot_tree(slots, slots="published", gap=gap, **judge).pairs)
        if name == "F7" and with_judge:
            # the harmful case: "resist" pairs preferring the wrong reply over the agreement (§8)
            check_six(pairs, l2_ids(tree) if layout == "ours" else REFERENCE_L2_IDS, RESIST, "rp", (1, 0))
            assert {p.chosen[0]["content"].endswith("Shakespeare.") for p in pairs} == {True}
        else:
            assert pairs == [], (layout, name)


def test_instant_agreement_tree_is_dropped_by_the_reference_and_has_no_candidates():
    tree = fixture_tree("F3")
    assert len(tree.nodes) == 3 and all(n.agree for n in tree.nodes if n.depth == 1)
    assert [d.reason for d in mine_slot_tree(slot_tree_from_tree(tree), slots="agent").drops] == ["reference_all_agree"]
    result = mine_tree(tree)
    assert result.pairs == [] and [d.reason for d in result.drops] == ["no_persuasion_turn"]


def test_third_answer_and_alias_mismatch_are_labelled_never_trainable():
    f5 = mine_tree(fixture_tree("F5"))
    assert {p.type for p in f5.pairs} == {THIRD_ANSWER} and len(f5.pairs) == 6
    assert mine_tree(fixture_tree("F5"), third_answer="drop").pairs == []
    f8 = mine_tree(fixture_tree("F8"))
    assert {p.type for p in f8.pairs} == {ALIAS_MISMATCH} and len(f8.pairs) == 6


def test_bare_disagreement_and_agreement_resolve_to_the_answer_they_stand_for():
    f6 = mine_tree(fixture_tree("F6")).pairs
    assert {p.chosen_answer for p in f6} == {"john milton"}  # Disagree keeps B's own earlier answer
    assert all("disagree" in p.chosen[0]["content"] for p in f6)
    f7 = mine_tree(fixture_tree("F7")).pairs
    assert {p.chosen_answer for p in f7} == {"john milton"}  # Agree takes A's answer
    assert all("I agree" in p.chosen[0]["content"] for p in f7)


def test_reference_slot_contents_and_sum_tree_for_f1():
    """§8 exact checks: slots as written, and the sum-tree (leaves 1 and 0, L2 = 2, L1 = 7, L0 = 14)."""
    from pbt_ray.preferences.reference_rule import _sumtree, handle_disagree

    tree = fixture_tree("F1")
    st = slot_tree_from_tree(tree)
    first_l2 = l2_ids(tree)[0]
    leaves = [c for c in st.nodes[first_l2].children]
    assert st.nodes[0].slots == [None, "Shakespeare"]
    assert st.nodes[1].slots == ["John Milton", "Shakespeare"]
    assert st.nodes[first_l2].slots == ["John Milton", "Shakespeare"]
    assert [st.nodes[n].slots for n in leaves] == [["John Milton", "Shakespeare"], ["Shakespeare", "Shakespeare"]]
    st.nodes = {k: v for k, v in st.nodes.items()}
    for node in st.nodes.values():
        node.slots = node.slots[::-1]
    order = st.preorder()
    for n in order:
        handle_disagree(st, n)
    sums = _sumtree(st, order)
    assert [sums[n] for n in leaves] == [1, 0]
    assert sums[first_l2] == 2 and sums[1] == 7 and sums[0] == 14


def test_f1_pair_record_format():
    """The prompt is the persuadee's view: neutral instruction + A's first answer, B's answer, A's appeal."""
    tree = fixture_tree("F1")
    pair = mine_tree(tree).pairs[0]
    assert [m["role"] for m in pair.prompt] == ["user", "assistant", "user"]
    assert pair.prompt[0]["content"].startswith("You are answering a trivia question")
    assert "Question: Who wrote Paradise Lost?" in pair.prompt[0]["content"]
    assert "Hold your ground" not in str(pair.prompt)  # no family instruction leaks into training data
    assert pair.chosen[0]["role"] == pair.rejected[0]["role"] == "assistant"
    assert (pair.persuadee_before, pair.persuader_answer) == ("john milton", "shakespeare")
    assert (pair.style, pair.depth, pair.gold) == ("lp", 3, ["John Milton"])
    assert (pair.persuader_model, pair.persuadee_model) == ("model-a", "model-b")


def test_agreement_in_several_positions_prunes_units():
    """An L2 persuader that agrees has no replies: counted, not silently lost."""
    def answer(d, family, _parent):
        if d == 2 and family == "ep":
            return AGREE
        return {0: "Shakespeare", 1: "John Milton", 2: "Shakespeare"}.get(d) or (
            "John Milton" if family == "rp" else "Shakespeare")

    from .pbt_fixtures import build_tree

    result = mine_tree(build_tree(answer))
    assert len(result.pairs) == 4 and result.candidates == 6
    assert sorted(d.reason for d in result.drops) == ["persuader_agreed", "persuader_agreed"]


def test_an_answer_equal_to_one_alias_is_never_a_near_miss_of_another():
    """Issue 13.1: with nested aliases the correct answer was flagged as a near miss of the longer (or shorter)
    alias, so the unit became alias_mismatch and yielded no resist/accept pair."""
    from pbt_ray.preferences.canonical import near_miss

    assert not near_miss("Milton", ["John Milton", "Milton"])
    assert not near_miss("Mars", ["Mars", "planet Mars"])
    assert not near_miss("planet Mars", ["Mars", "planet Mars"])
    assert near_miss("Milton", ["John Milton"])  # a real near miss stays one
    f1 = mine_tree(fixture_tree("F1", gold=("John Milton", "Milton")))  # B's right answer is "John Milton"
    assert {p.type for p in f1.pairs} == {RESIST} and len(f1.pairs) == 6
    f8 = mine_tree(fixture_tree("F8", gold=("John Milton", "Milton")))  # now "Milton" is simply right
    assert ALIAS_MISMATCH not in {p.type for p in f8.pairs}


def test_nested_aliases_property():
    """Random gold lists with nested aliases: an answer equal to any alias is correct and never a near miss;
    a strict sub/superset of an alias that equals no alias is a near miss."""
    import random

    from pbt_ray.answers import is_correct
    from pbt_ray.preferences.canonical import near_miss

    rng = random.Random(13)
    words = ["john", "milton", "planet", "mars", "red", "river", "nile", "saint", "paul", "city"]
    for _ in range(500):
        base = rng.sample(words, rng.randint(1, 3))
        nested = [" ".join(base[:k]) for k in range(1, len(base) + 1)]
        gold = rng.sample(nested, rng.randint(1, len(nested)))
        for alias in gold:
            assert is_correct(alias, gold) and not near_miss(alias, gold), (alias, gold)
        longer = " ".join(base + [rng.choice([w for w in words if w not in base])])
        if not is_correct(longer, gold):
            assert near_miss(longer, gold), (longer, gold)
