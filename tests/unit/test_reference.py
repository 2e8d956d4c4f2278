"""Import/export of the reference PBT JSONL layout, on PBT_SPEC §8 style fixtures."""

import copy
import dataclasses
import json

import pytest

from pbt_ray.dialogue.reference import (
    read_reference_jsonl, tree_from_reference, tree_to_reference, write_reference_jsonl,
)
from pbt_ray.dialogue.tree import Tree, TreeSchemaError, latest_answers

QUESTION = "Who wrote Paradise Lost?"
JM, SH, MA = "John Milton", "Shakespeare", "Marlowe"


def _in_agreement(slots):
    """The reference stop rule (§1.4): exact equal slots (not both None/NONE) or an Agree token."""
    s0, s1 = slots
    return (s0 == s1 and s0 not in (None, "NONE")) or "Agree" in slots


def build_reference(a0, b1, a2, b3r, b3a, *, mode="train", max_turns=4, qid="tc_1_0"):
    """A reference record grown exactly like ``Trajectory.fill`` with a stub extractor (§1.1, §1.4).

    Answers are per level (L3 per family); every text is tagged with the families on its path.
    """
    lists = [["rp", "ap"], ["lp", "ep", "cp"]] if mode == "train" else [["sp"], ["sp"]]
    root = {"node_idx": -1, "agent_idx": -1, "generation": f"... Question: {QUESTION}",
            "extracted_ans": [None, None], "extracted_conf": -1, "parent": -1, "children": []}
    data = [root]

    def expand(parent, level, family, tags):
        if level >= max_turns or _in_agreement(parent["extracted_ans"]):
            return
        agent = level % 2
        tags = tags + [family]
        answer = [a0, b1, a2, b3r if family in ("rp", "sp") else b3a][level]
        slots = list(parent["extracted_ans"])
        slots[1 - agent] = answer
        turn = {"node_idx": len(data), "agent_idx": agent,
                "generation": f"[{'/'.join(tags)}] I think the answer is {answer}.",
                "extracted_ans": slots, "extracted_conf": -1, "parent": parent["node_idx"], "children": []}
        parent["children"].append(turn["node_idx"])
        data.append(turn)
        for child_family in lists[agent]:
            expand(turn, level + 1, child_family, tags)

    expand(root, 0, "L0" if mode == "train" else "sp", [])
    metadata = {"question": QUESTION, "question_id": qid,
                "answer": {"aliases": [JM], "normalized_aliases": ["john milton"], "value": JM}}
    return {"data": data, "metadata": metadata, "model_a": "llama-8b", "model_b": "mistral-7b"}


def test_full_training_tree_f1():
    record = build_reference(SH, JM, SH, JM, SH)
    assert len(record["data"]) == 22
    assert record["data"][1]["children"] == [2, 12] and record["data"][2]["children"] == [3, 6, 9]
    assert record["data"][5]["extracted_ans"] == [SH, SH]

    tree = tree_from_reference(record)
    assert isinstance(tree, Tree)
    assert tree.depth_counts() == [1, 2, 6, 12]
    assert [n.id for n in tree.nodes] == list(range(21))
    assert [n.parent for n in tree.nodes] == [-1, 0, 0, 1, 1, 1, 2, 2, 2] + [p for p in range(3, 9) for _ in (0, 1)]
    assert [n.speaker for n in tree.nodes] == ["A", "B", "B"] + ["A"] * 6 + ["B"] * 12
    assert [n.family for n in tree.nodes] == ["unknown", "rp", "ap"] + ["lp", "ep", "cp"] * 2 + ["rp", "ap"] * 6
    assert [n.role for n in tree.nodes] == ["independent"] * 3 + ["persuader"] * 6 + ["persuadee"] * 12
    # BFS numbering keeps the reference children order: our node 6 is reference node 13 (L1 ap -> L2 lp).
    assert tree.nodes[6].text.startswith("[L0/ap/lp]") and tree.nodes[20].text.startswith("[L0/ap/cp/ap]")

    leaves = tree.nodes[9:]
    assert [n.answer for n in tree.nodes[:9]] == ["shakespeare", "john milton", "john milton"] + ["shakespeare"] * 6
    assert [n.answer for n in leaves] == ["john milton", "shakespeare"] * 6
    assert [n.raw_answer for n in leaves[:2]] == [JM, SH]
    assert all(n.outcome == "answer" for n in tree.nodes)
    assert [n.correct for n in tree.nodes[:3]] == [False, True, True]
    assert [n.correct for n in leaves] == [True, False] * 6
    assert [n.agree for n in tree.nodes[:9]] == [False] * 9
    assert [n.agree for n in leaves] == [False, True] * 6
    assert latest_answers(tree.path(9)) == {"A": "shakespeare", "B": "john milton"}
    assert latest_answers(tree.path(10)) == {"A": "shakespeare", "B": "shakespeare"}

    assert tree.tree_id == tree.question_id == "tc_1_0"
    assert tree.gold == ["john milton"] and tree.seed == -1 and tree.mode == "train"
    assert tree.models == {"A": "llama-8b", "B": "mistral-7b", "extractor": ""}
    assert tree.roles == {"persuader": "A", "persuadee": "B"} and tree.source == "reference"


def test_agreement_in_reference_slots_is_agree():
    tree = tree_from_reference(build_reference(JM, JM, SH, SH, SH))  # F3: instant agreement
    assert tree.depth_counts() == [1, 2]
    assert [n.agree for n in tree.nodes] == [False, True, True]
    assert all(n.correct for n in tree.nodes)


def test_case_variants_agree_although_reference_kept_growing():
    record = build_reference(JM, "john milton", SH, SH, SH)
    assert len(record["data"]) == 22  # case-sensitive reference stop rule did not prune
    tree = tree_from_reference(record)
    assert tree.nodes[1].agree and tree.nodes[2].agree


def test_bare_disagreement_and_agreement_tokens_resolve():
    f6 = tree_from_reference(build_reference(SH, JM, SH, "Disagree", SH))
    resist = f6.nodes[9]
    assert (resist.outcome, resist.raw_answer, resist.answer, resist.correct, resist.agree) == (
        "disagree", "Disagree", "john milton", True, False)

    f7 = tree_from_reference(build_reference(JM, SH, JM, SH, "Agree"))
    accept = f7.nodes[10]
    assert (accept.outcome, accept.answer, accept.correct, accept.agree) == ("agree", "john milton", True, True)

    none = tree_from_reference(build_reference("NONE", JM, SH, JM, SH))
    assert (none.nodes[0].outcome, none.nodes[0].answer, none.nodes[0].correct) == ("none", None, False)
    assert none.nodes[0].agree is False


def test_eval_mode_uses_standard_prompt():
    tree = tree_from_reference(build_reference(SH, JM, SH, JM, SH, mode="eval"), mode="eval")
    assert tree.depth_counts() == [1, 1, 1, 1]
    assert {n.family for n in tree.nodes} == {"sp"} and tree.mode == "eval"
    with pytest.raises(ValueError):
        tree_from_reference(build_reference(SH, JM, SH, JM, SH), mode="bogus")


@pytest.mark.parametrize("answers", [(SH, JM, SH, JM, SH), (JM, SH, JM, SH, "Agree"),
                                     (SH, JM, SH, "Disagree", SH), (JM, JM, SH, SH, SH), ("NONE", MA, SH, MA, JM)])
def test_round_trip(answers):
    record = build_reference(*answers)
    tree = tree_from_reference(record)
    exported = tree_to_reference(tree)
    assert exported["data"][1:] == record["data"][1:]  # ids, parents, children, slots, texts
    assert exported["data"][0]["children"] == record["data"][0]["children"]
    assert exported["data"][0]["generation"].endswith(f"Question: {QUESTION}")
    assert exported["model_a"] == "llama-8b" and exported["model_b"] == "mistral-7b"
    again = tree_from_reference(json.loads(json.dumps(exported)))
    assert [dataclasses.asdict(n) for n in again.nodes] == [dataclasses.asdict(n) for n in tree.nodes]
    assert (again.question, again.question_id, again.gold) == (tree.question, tree.question_id, tree.gold)


def test_metadata_fallbacks():
    record = build_reference(SH, JM, SH, JM, SH)
    del record["metadata"]["question_id"]
    record["metadata"]["answer"] = {"aliases": [JM, "Milton"]}
    tree = tree_from_reference(record)
    assert tree.question_id == tree.tree_id == tree_from_reference(copy.deepcopy(record)).question_id
    assert tree.question_id.startswith("q") and tree.gold == [JM, "Milton"]
    record["metadata"]["answer"] = {"value": JM}
    assert tree_from_reference(record).gold == [JM]


def _broken(mutate):
    record = build_reference(SH, JM, SH, JM, SH)
    mutate(record)
    return record


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r.pop("data"), "data"),
    (lambda r: r.update(data=[]), "data"),
    (lambda r: r["data"][4].update(parent=99), "parent"),
    (lambda r: r["data"][4].update(extracted_ans=["x"]), "extracted_ans"),
    (lambda r: r["data"][4].update(agent_idx=2), "agent_idx"),
    (lambda r: r["data"][4].update(node_idx="4"), "node_idx"),
    (lambda r: r["data"][5].update(node_idx=4), "duplicate"),
    (lambda r: r["data"][4].pop("generation"), "generation"),
    (lambda r: r["data"][2]["children"].append(4), "children"),
    (lambda r: r.pop("metadata"), "metadata"),
    (lambda r: r["metadata"].update(answer={}), "metadata.answer"),
    (lambda r: r["data"].pop(0), "root"),
    (lambda r: (r["data"][2].update(parent=3), r["data"][3].update(parent=2),
                r["data"][1]["children"].remove(2), r["data"][2]["children"].remove(3),
                r["data"][2]["children"].append(3), r["data"][3]["children"].append(2)), "not reachable"),
])
def test_malformed_records_name_the_problem(mutate, field):
    with pytest.raises(TreeSchemaError, match=field):
        tree_from_reference(_broken(mutate))


def test_non_object_record():
    with pytest.raises(TreeSchemaError, match="JSON object"):
        tree_from_reference(["not", "a", "record"])


def test_jsonl_read_reports_bad_lines_and_continues(tmp_path):
    path = tmp_path / "tqa_shard_0.jsonl"
    good = build_reference(SH, JM, SH, JM, SH)
    lines = [json.dumps(good), "{this is not json", "", json.dumps({"metadata": {}}), json.dumps(good)]
    path.write_text("\n".join(lines) + "\n")
    results = list(read_reference_jsonl(path))
    assert [lineno for lineno, _ in results] == [1, 2, 4, 5]
    assert isinstance(results[0][1], Tree) and isinstance(results[3][1], Tree)
    assert isinstance(results[1][1], TreeSchemaError) and "line 2" in str(results[1][1])
    assert isinstance(results[2][1], TreeSchemaError) and "line 4" in str(results[2][1])
    assert "data" in str(results[2][1])


def test_jsonl_write_then_read(tmp_path):
    trees = [tree_from_reference(build_reference(*a, qid=f"q{i}"))
             for i, a in enumerate([(SH, JM, SH, JM, SH), (JM, JM, SH, SH, SH)])]
    path = tmp_path / "out.jsonl"
    write_reference_jsonl(trees, path)
    back = [t for _, t in read_reference_jsonl(path)]
    assert [t.question_id for t in back] == ["q0", "q1"]
    assert [[dataclasses.asdict(n) for n in t.nodes] for t in back] == [
        [dataclasses.asdict(n) for n in t.nodes] for t in trees]
