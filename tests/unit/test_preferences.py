"""Properties of mining over random trees, dataset selection, the pairs files, stats and bad input."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pbt_ray.config import load_config
from pbt_ray.dialogue.reference import tree_to_reference, write_reference_jsonl
from pbt_ray.dialogue.tree import tree_schema, to_row
from pbt_ray.preferences.canonical import mine_tree
from pbt_ray.preferences.datasets import select, split_of
from pbt_ray.preferences.mining import MineError, find_tree_files, mine, mine_file
from pbt_ray.preferences.pairs import ACCEPT, RESIST, read_pairs
from pbt_ray.preferences.reference_rule import mine_slot_tree, slot_tree_from_tree
from pbt_ray.preferences.stance import check_stances, parse_stance

from .pbt_fixtures import fixture_tree, random_tree, write_ours

RANDOM_TREES = [random_tree(random.Random(seed), seed) for seed in range(400)]


def all_pairs(trees=RANDOM_TREES):
    return [p for t in trees for p in mine_tree(t).pairs]


def test_random_trees_pairs_share_prompt_and_parent_and_differ():
    pairs = all_pairs()
    assert sum(p.type == RESIST for p in pairs) > 20 and sum(p.type == ACCEPT for p in pairs) > 20
    by_tree = {t.tree_id: t for t in RANDOM_TREES}
    for p in pairs:
        nodes = {n.id: n for n in by_tree[p.tree_id].nodes}
        chosen, rejected = nodes[p.chosen_node], nodes[p.rejected_node]
        assert chosen.parent == rejected.parent == p.parent_node
        assert p.prompt[-1]["content"] == nodes[p.parent_node].text  # the prompt ends with the persuasion turn
        assert p.chosen != p.rejected and p.chosen_node != p.rejected_node
        if p.type in (RESIST, ACCEPT):
            assert chosen.correct and not rejected.correct
            assert nodes[p.parent_node].correct == (p.type == ACCEPT)


def test_random_trees_every_candidate_is_a_pair_or_a_counted_reason():
    for tree in RANDOM_TREES:
        result = mine_tree(tree)
        units_with_pairs = {p.parent_node for p in result.pairs}
        reasons = [d for d in result.drops if d.node is not None]
        assert len(units_with_pairs) + len(reasons) == result.candidates
        assert not units_with_pairs & {d.node for d in reasons}


def test_random_trees_reference_rule_never_crashes_and_counts_every_comparison():
    for tree in RANDOM_TREES[:100]:
        for slots in ("published", "agent"):
            result = mine_slot_tree(slot_tree_from_tree(tree), slots=slots, gap=">=")
            assert len(result.pairs) + len([d for d in result.drops if d.node is not None]) == result.candidates


@pytest.mark.parametrize("balance", ["balanced", "resist-only", "accept-only", "none"])
def test_selection_splits_by_question_and_balances(balance):
    pairs = all_pairs()
    sel = select(pairs, balance, seed=3)
    questions = {s: {p.question_id for p in ps} for s, ps in sel.splits.items()}
    assert not questions["train"] & questions["dev"] and not questions["train"] & questions["test"]
    assert not questions["dev"] & questions["test"]
    for split, ps in sel.splits.items():
        counts = Counter(p.type for p in ps)
        n = min(sel.available[split][RESIST], sel.available[split][ACCEPT])
        expected = {"balanced": {RESIST: n, ACCEPT: n}, "resist-only": {RESIST: n}, "accept-only": {ACCEPT: n},
                    "none": dict(sel.available[split])}[balance if split == "train" or balance == "none" else "balanced"]
        assert {k: v for k, v in counts.items() if v} == {k: v for k, v in expected.items() if v}
        assert set(counts) <= {RESIST, ACCEPT}


def test_one_sided_conditions_keep_both_sides_in_dev_and_test():
    """The paper's ablations train on one side, but are selected and evaluated on both (PBT_SPEC.md §2.11: dev
    and test are balanced): a resist-only run whose test split held only resist pairs reported its resist
    accuracy as 'balanced accuracy'. Every condition gets the same dev and test pairs."""
    pairs = all_pairs()
    held = {b: select(pairs, b, seed=3) for b in ("balanced", "resist-only", "accept-only")}
    for split in ("dev", "test"):
        ids = {b: [p.pair_id for p in sel.splits[split]] for b, sel in held.items()}
        assert ids["resist-only"] == ids["accept-only"] == ids["balanced"]
        assert {p.type for p in held["resist-only"].splits[split]} == {RESIST, ACCEPT}
    assert {p.type for p in held["resist-only"].splits["train"]} == {RESIST}
    assert {p.type for p in held["accept-only"].splits["train"]} == {ACCEPT}


def test_selection_is_deterministic_and_order_independent():
    pairs = all_pairs()
    a = select(pairs, "balanced", seed=5)
    b = select(list(reversed(pairs)), "balanced", seed=5)
    assert {s: [p.pair_id for p in ps] for s, ps in a.splits.items()} == {s: [p.pair_id for p in ps] for s, ps in b.splits.items()}
    c = select(pairs, "balanced", seed=6)
    assert [p.pair_id for p in a.splits["train"]] != [p.pair_id for p in c.splits["train"]]


def test_split_shares_follow_the_fractions():
    counts = Counter(split_of(f"q{i}", 12) for i in range(5000))
    assert 0.67 < counts["train"] / 5000 < 0.73 and 0.12 < counts["dev"] / 5000 < 0.18


def test_balanced_dataset_assembly_from_spec_example():
    """§8: one F1 and one F2 tree -> 6 resist + 6 accept; F1 twice and F2 once -> still 6 + 6."""
    trees = [fixture_tree("F1"), fixture_tree("F2")]
    pairs = all_pairs(trees)
    sel = select(pairs, "balanced", seed=1, fractions=(1.0, 0.0, 0.0))
    assert Counter(p.type for p in sel.splits["train"]) == {RESIST: 6, ACCEPT: 6}
    extra = fixture_tree("F1")
    extra.tree_id, extra.question_id = "tree-F1b", "q-F1b"
    pairs = all_pairs(trees + [extra])
    sel = select(pairs, "balanced", seed=1, fractions=(1.0, 0.0, 0.0))
    assert Counter(p.type for p in sel.splits["train"]) == {RESIST: 6, ACCEPT: 6}
    assert sel.available["train"] == {RESIST: 12, ACCEPT: 6}
    assert Counter(p.type for p in select(pairs, "accept-only", 1, (1.0, 0, 0)).splits["train"]) == {ACCEPT: 6}
    assert Counter(p.type for p in select(pairs, "resist-only", 1, (1.0, 0, 0)).splits["train"]) == {RESIST: 6}


# ---- files, stats and bad input ---------------------------------------------------------------------


def test_mine_both_input_formats_and_write_trl_ready_files(tmp_path):
    trees = [fixture_tree(n) for n in ("F1", "F2", "F3", "F5", "F8")] + RANDOM_TREES[:30]
    (tmp_path / "trees").mkdir()
    write_ours(tmp_path / "trees" / "part-a.parquet", trees)
    write_reference_jsonl(trees, tmp_path / "reference.jsonl")
    cfg = load_config("local", [f"runs_dir={tmp_path}", "name=run", "mine.split_fractions=[1.0,0.0,0.0]", "mine.balance=balanced"])
    logs = []
    stats = mine(cfg, trees=str(tmp_path), out=str(tmp_path / "ours"), use_ray=False, log=logs.append)
    ref = mine(cfg, trees=str(tmp_path / "reference.jsonl"), out=str(tmp_path / "ref"), use_ray=False, log=logs.append)
    for key in ("pairs_by_type", "drops_by_reason", "candidates"):
        assert stats[key] == ref[key], key  # the same trees mined from either layout give the same result
    assert stats["pairs_by_type"]["third_answer"] >= 6 and stats["pairs_by_type"]["alias_mismatch"] >= 6
    assert stats["drops_by_reason"]["no_persuasion_turn"] >= 1
    train = read_pairs(tmp_path / "ours" / "pairs" / "train.parquet")
    assert Counter(p.type for p in train)[RESIST] == Counter(p.type for p in train)[ACCEPT] > 0
    assert {r["split"] for r in pq.read_table(tmp_path / "ours" / "pairs" / "train.parquet").to_pylist()} == {"train"}
    sft = pq.read_table(tmp_path / "ours" / "sft" / "train.parquet").to_pylist()
    assert len(sft) == len(train) and sft[0]["completion"][0]["role"] == "assistant"
    report = "\n".join(logs)
    assert "pairs by type" in report and "no pair, by reason" in report and "selected (balanced" in report
    saved = json.loads((tmp_path / "ours" / "mine_stats.json").read_text())
    assert saved["pairs_by_type"] == stats["pairs_by_type"]


def test_reference_rule_through_the_stage(tmp_path):
    trees = [fixture_tree("F1"), fixture_tree("F2")]
    write_reference_jsonl(trees, tmp_path / "t.jsonl")
    base = ["mine.rule=reference", "mine.split_fractions=[1.0,0.0,0.0]", "mine.balance=none"]
    published = mine(load_config("local", base), trees=str(tmp_path / "t.jsonl"), out=str(tmp_path / "a"),
                     use_ray=False, log=lambda *_: None)
    assert not published["pairs_by_type"].get(RESIST) and not published["pairs_by_type"].get(ACCEPT)
    agent = mine(load_config("local", base + ["mine.reference_slots=agent", "mine.reference_gap=>="]),
                 trees=str(tmp_path / "t.jsonl"), out=str(tmp_path / "b"), use_ray=False, log=lambda *_: None)
    assert agent["pairs_by_type"][RESIST] == 6 and agent["pairs_by_type"][ACCEPT] == 6


def test_broken_trees_are_reported_with_ids_and_counted(tmp_path):
    good = fixture_tree("F1")
    cycle = fixture_tree("F2")
    cycle.tree_id = "cyclic"
    cycle.nodes[1].parent, cycle.nodes[0].parent = 3, 1  # 0 -> 1 -> 0 ... never reaches the first turn
    nogold = fixture_tree("F2")
    nogold.tree_id, nogold.gold = "no-gold", []
    speaker = fixture_tree("F2")
    speaker.tree_id = "bad-speaker"
    speaker.nodes[4].speaker = "C"
    orphan = fixture_tree("F2")
    orphan.tree_id = "orphan"
    orphan.nodes[5].parent = 99
    rows = [to_row(t) for t in (good, cycle, nogold, speaker, orphan)]
    pq.write_table(pa.Table.from_pylist(rows, schema=tree_schema()), tmp_path / "trees.parquet")
    lines = [json.dumps(tree_to_reference(good)), "{not json", json.dumps({"data": [], "metadata": {}})]
    no_answer = tree_to_reference(good)
    no_answer["metadata"]["answer"] = {}
    lines.append(json.dumps(no_answer))
    (tmp_path / "ref.jsonl").write_text("\n".join(lines) + "\n")

    cfg = load_config("local", ["mine.split_fractions=[1.0,0.0,0.0]"])
    ours = mine_file(str(tmp_path / "trees.parquet"), "ours", cfg.mine)
    broken = {d["tree_id"].split("(")[-1].rstrip(")"): d["detail"] for d in ours["drops"] if d["reason"] == "broken_tree"}
    assert set(broken) == {"cyclic", "no-gold", "bad-speaker", "orphan"}
    assert "cycle" in broken["cyclic"] and "gold" in broken["no-gold"] and "unknown parent" in broken["orphan"]
    assert len(ours["pairs"]) == 6
    ref = mine_file(str(tmp_path / "ref.jsonl"), "reference", cfg.mine)
    where = sorted(d["tree_id"] for d in ref["drops"] if d["reason"] == "broken_tree")
    assert where == [f"{tmp_path / 'ref.jsonl'} line {n}" for n in (2, 3, 4)]
    assert len(ref["pairs"]) == 6

    with pytest.raises(MineError, match="broken tree"):
        mine(load_config("local", ["mine.on_broken_tree=fail"]), trees=str(tmp_path / "trees.parquet"),
             out=str(tmp_path / "out"), use_ray=False, log=lambda *_: None)


def test_missing_or_unknown_inputs_say_what_to_pass(tmp_path):
    with pytest.raises(MineError, match="does not exist"):
        find_tree_files(tmp_path / "nope")
    with pytest.raises(MineError, match="no tree files"):
        find_tree_files(tmp_path)
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(MineError, match="--input-format"):
        find_tree_files(tmp_path / "x.csv")


def test_stance_check_keeps_pairs_whose_replies_fit_their_type():
    pairs = all_pairs([fixture_tree("F1"), fixture_tree("F2"), fixture_tree("F5")])

    async def classify(_persuasion, reply):
        return "agree" if "the answer is Shakespeare" in reply else "disagree"  # wrong for F2's accept replies

    kept, dropped = asyncio.run(check_stances(pairs, classify))
    assert Counter(p.type for p in kept) == {RESIST: 6, "third_answer": 6}
    assert Counter(r for _, r in dropped) == {"stance_unconfirmed": 6}
    assert parse_stance(" Agree.") == "agree" and parse_stance("disagree") == "disagree" and parse_stance("maybe") is None
