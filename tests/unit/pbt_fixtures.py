"""Trees of PBT_SPEC.md §8 (and random ones) built the way the growth engine builds them."""

from __future__ import annotations

import random

from pbt_ray.dialogue.tree import Node, Tree, resolve_answer

AGREE, DISAGREE = "<agree>", "<disagree>"
BARE = {AGREE: ("You're right, I agree with you.", "agree"), DISAGREE: ("No, I disagree with that.", "disagree"),
        "NONE": ("Hmm, that is a hard one.", "none")}

# id: (A0, B1, A2, B3r, B3a) - PBT_SPEC.md §8
FIXTURES = {
    "F1": ("Shakespeare", "John Milton", "Shakespeare", "John Milton", "Shakespeare"),
    "F2": ("John Milton", "Shakespeare", "John Milton", "Shakespeare", "John Milton"),
    "F3": ("John Milton", "John Milton", "-", "-", "-"),
    "F4": ("Shakespeare", "Marlowe", "Shakespeare", "Marlowe", "Shakespeare"),
    "F5": ("Shakespeare", "Marlowe", "Shakespeare", "Marlowe", "John Milton"),
    "F6": ("Shakespeare", "John Milton", "Shakespeare", DISAGREE, "Shakespeare"),
    "F7": ("John Milton", "Shakespeare", "John Milton", "Shakespeare", AGREE),
    "F8": ("Milton", "Shakespeare", "Milton", "Shakespeare", "John Milton"),
}


def build_tree(answers_by_depth, *, tree_id="t1", question_id="q1", gold=("John Milton",),
               question="Who wrote Paradise Lost?", depth=4) -> Tree:
    """A training tree of the paper's shape (1, 2, 3, 2 children per level, A persuades, B's first turn
    independent). ``answers_by_depth(depth, family, parent)`` gives each turn's answer (or AGREE/DISAGREE)."""
    tree = Tree(tree_id=tree_id, question_id=question_id, question=question, gold=list(gold), mode="train",
                models={"A": "model-a", "B": "model-b", "extractor": "model-x"},
                roles={"persuader": "A", "persuadee": "B"}, seed=0, source="fixture")
    families = {0: ("lp",), 1: ("rp", "ap"), 2: ("lp", "ep", "cp"), 3: ("rp", "ap")}

    def add(parent: Node | None, d: int, family: str) -> Node:
        speaker = "A" if d % 2 == 0 else "B"
        role = "independent" if d <= 1 else ("persuader" if speaker == "A" else "persuadee")
        answer = answers_by_depth(d, family, parent)
        nid = len(tree.nodes)
        if answer in BARE:
            text, outcome = BARE[answer]
            text = f"[{nid} {family}] {text}"
            raw = None
        else:
            text, outcome, raw = f"[{nid} {family}] I think the answer is {answer}.", "answer", answer
        node = Node(id=nid, parent=-1 if parent is None else parent.id, depth=d, speaker=speaker, role=role,
                    family=family, text=text, raw_answer=raw, outcome=outcome)
        resolve_answer(node, tree.path(node.parent), tree.gold)
        tree.nodes.append(node)
        return node

    level = [add(None, 0, families[0][0])]
    for d in range(1, depth):
        level = [add(n, d, fam) for n in level if not n.agree for fam in families[d % 4 if d < 4 else 2 + d % 2]]
    return tree


def fixture_tree(name: str, **kwargs) -> Tree:
    a0, b1, a2, b3r, b3a = FIXTURES[name]

    def answer(d, family, _parent):
        return {0: a0, 1: b1, 2: a2}.get(d) or (b3r if family == "rp" else b3a)

    return build_tree(answer, tree_id=f"tree-{name}", question_id=f"q-{name}", **kwargs)


ANSWER_POOL = ["John Milton", "Shakespeare", "Marlowe", "Milton", "none of them", AGREE, DISAGREE, "NONE"]


def random_tree(rng: random.Random, i: int) -> Tree:
    def answer(_d, _family, _parent):
        return rng.choice(ANSWER_POOL)

    return build_tree(answer, tree_id=f"r{i}", question_id=f"rq{i % 40}")


def write_ours(path, trees) -> None:
    """Trees as one Parquet part file, the way `pbt grow` writes them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pbt_ray.dialogue.tree import to_row, tree_schema

    pq.write_table(pa.Table.from_pylist([to_row(t) for t in trees], schema=tree_schema()), path)
