"""The reference's pair extraction, reproduced for ablations (PBT_SPEC.md §2.1-2.7, §8). Pure.

Works on a *slot tree*: every turn carries the reference's two-slot ``extracted_ans`` list (a node copies
its parent's slots and writes its own answer into slot ``1 - agent``). ``slots="published"`` runs the
code as released, reading slots by ``agent_idx``, i.e. the other agent's answer (§0.1): it yields no
pairs on textbook trees. ``slots="agent"`` swaps the slots first so that slot = speaker, the intended
reading. On that tree the literal steps follow: disagree/agree resolution, the children-first sum-tree,
the sibling walk with the relative-gap threshold (``>`` or ``>=`` 0.5), ``filter_by_agree_or_resist``,
and optionally the judge's re-annotation and code confirmation. The reference mutates its trees in
place while it mines, and so do these functions - on their own copy.

Use :mod:`pbt_ray.preferences.canonical` for training data; this module exists so that results can be
compared with the paper's pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pbt_ray.answers import normalize_answer
from pbt_ray.dialogue.reference import _family, _ordered_children, _turns
from pbt_ray.dialogue.tree import Tree, TreeSchemaError
from pbt_ray.preferences.canonical import Drop, MineResult, check_minable
from pbt_ray.preferences.pairs import ACCEPT, RESIST, UNLABELED, Pair, prompt_messages, reply_message

# judge(question, answer_a, answer_b) -> True when the two answers agree (§2.6);
# stance(reply_text) -> "agree" | "disagree" (§2.7).
Judge = Callable[[str, str, str], bool]
Stance = Callable[[str], str]
_TOKENS = {"answer": None, "agree": "Agree", "disagree": "Disagree", "none": "NONE"}
_AGENT = {"A": 0, "B": 1}


@dataclass
class SlotNode:
    id: int
    agent: int  # -1 root, 0 = A, 1 = B
    slots: list[Any]
    parent: int
    depth: int
    text: str = ""
    family: str = ""
    children: list[int] = field(default_factory=list)


@dataclass
class SlotTree:
    tree_id: str
    question_id: str
    question: str
    gold: list[str]  # normalized aliases
    nodes: dict[int, SlotNode]  # root = -1
    models: dict[str, str]
    source: str = ""

    def preorder(self) -> list[int]:
        out, stack = [], [-1]
        while stack:
            nid = stack.pop()
            out.append(nid)
            stack.extend(reversed(self.nodes[nid].children))
        return out


def slot_tree_from_tree(tree: Tree) -> SlotTree:
    """Our tree written the way the reference grows one (parent's slots copied, own slot ``1 - agent``)."""
    check_minable(tree)
    nodes = {-1: SlotNode(-1, -1, [None, None], -1, -1)}
    for node in sorted(tree.nodes, key=lambda n: n.id):  # breadth-first ids: parents come first
        agent = _AGENT[node.speaker]
        slots = list(nodes[node.parent].slots)
        slots[1 - agent] = node.raw_answer if node.outcome == "answer" else _TOKENS[node.outcome]
        nodes[node.id] = SlotNode(node.id, agent, slots, node.parent, node.depth, node.text, node.family)
        nodes[node.parent].children.append(node.id)
    return SlotTree(tree.tree_id, tree.question_id, tree.question, [normalize_answer(g) for g in tree.gold],
                    nodes, dict(tree.models), tree.source)


def slot_tree_from_record(record: dict, tree: Tree) -> SlotTree:
    """A reference JSONL record with its slots exactly as written (``tree``: the same record imported,
    for the question, gold answers and ids)."""
    turns = _turns(record)
    children = _ordered_children(turns, record["data"])
    nodes: dict[int, SlotNode] = {}
    stack = [(-1, -1, 0)]
    while stack:
        idx, depth, pos = stack.pop()
        if idx in nodes:
            raise TreeSchemaError(f"node_idx {idx}: reached twice (cycle in parent links)")
        turn = turns[idx]
        nodes[idx] = SlotNode(idx, turn["agent_idx"] if idx != -1 else -1, list(turn.get("extracted_ans") or [None, None]),
                              turn["parent"] if idx != -1 else -1, depth, turn.get("generation", ""),
                              _family(depth, pos, tree.mode) if idx != -1 else "", list(children[idx]))
        stack.extend((kid, depth + 1, p) for p, kid in enumerate(children[idx]))
    return SlotTree(tree.tree_id, tree.question_id, tree.question, [normalize_answer(g) for g in tree.gold],
                    nodes, dict(tree.models), tree.source)


# ---- the reference's helpers (utils.py), literally --------------------------------------------------


def _is(value: Any, token: str) -> bool:
    return isinstance(value, str) and value.strip().lower() == token


def _indel_ratio(a: str, b: str) -> float:
    """Levenshtein.ratio for the case it is used in (one string contains the other): 2*LCS/(|a|+|b|)."""
    return 1.0 if not a and not b else 2 * min(len(a), len(b)) / (len(a) + len(b))


def handle_disagree(t: SlotTree, nid: int) -> None:
    node = t.nodes[nid]
    for i in (0, 1):
        if _is(node.slots[i], "disagree") and node.parent != -1:
            parent = t.nodes[node.parent]
            handle_disagree(t, node.parent)
            if parent.parent == -1:
                node.slots[i] = None
            else:
                handle_disagree(t, parent.parent)
                node.slots[i] = t.nodes[parent.parent].slots[i]


def handle_agree(slots: list[Any]) -> list[Any]:
    if _is(slots[0], "agree"):
        return [slots[1], slots[1]]
    if _is(slots[1], "agree"):
        return [slots[0], slots[0]]
    return slots


def check_acc(t: SlotTree, nid: int) -> list[bool] | None:
    s0, s1 = t.nodes[nid].slots
    if s0 is None or s1 is None:
        return None
    a, b = str(s0).lower().strip(), str(s1).lower().strip()
    if a == "agree":
        a = b
    elif b == "agree":
        b = a
    if (a in b or b in a) and _indel_ratio(a, b) > 0.5:  # the asymmetric merge (§2.2)
        a = b
    return [a in t.gold, b in t.gold]


def in_agreement(slots: list[Any]) -> bool:
    """The reference's stop rule (§1.4): exactly equal strings (not both None / "NONE"), or an "Agree"."""
    s0, s1 = slots
    if s0 == "Agree" or s1 == "Agree":
        return True
    return s0 == s1 and s0 is not None and s0 != "NONE"


# ---- mining -----------------------------------------------------------------------------------------


def mine_slot_tree(t: SlotTree, *, slots: str = "published", gap: str = ">", judge: Judge | None = None,
                   stance: Stance | None = None) -> MineResult:
    """Pairs of one slot tree under the reference logic; the tree is copied, never changed."""
    import copy

    if slots not in ("published", "agent") or gap not in (">", ">="):
        raise ValueError(f"slots must be published|agent and gap >|>=, got {slots!r}, {gap!r}")
    t = copy.deepcopy(t)
    rule = f"reference-{slots}"
    result = MineResult(trees=1)
    if slots == "agent":
        for node in t.nodes.values():
            node.slots = node.slots[::-1]
    order = t.preorder()
    for nid in order:  # load_dir
        handle_disagree(t, nid)
    later = [t.nodes[n] for n in order if n != -1 and t.nodes[n].depth >= 1]
    if all(in_agreement(n.slots) for n in later):
        result.drops.append(Drop("reference_all_agree", t.tree_id, detail="every turn after the first agrees"))
        return result
    if judge is not None:  # model-based agreement re-annotation (§2.6)
        for nid in order[1:]:
            node = t.nodes[nid]
            if node.slots[0] is None or node.slots[1] is None:
                continue
            if judge(t.question, str(node.slots[0]), str(node.slots[1])):
                acc = check_acc(t, nid)
                if acc and any(acc):
                    first = acc.index(True)
                    node.slots[1 - first] = node.slots[first]
                else:
                    node.slots[1] = node.slots[0]
    sums = _sumtree(t, order)
    seen: set[frozenset[int]] = set()
    for nid in order[1:]:
        x = t.nodes[nid]
        for yid in t.nodes[x.parent].children:
            if yid == nid or frozenset((nid, yid)) in seen:
                continue
            result.candidates += 1
            seen.add(frozenset((nid, yid)))
            reason = _compare(t, sums, nid, yid, gap, judge, stance, rule, result)
            if reason:
                result.drops.append(Drop(reason, t.tree_id, x.parent))
    return result


def _sumtree(t: SlotTree, order: list[int]) -> dict[int, int]:
    sums = {nid: 0 for nid in order}
    for nid in reversed(order):
        handle_disagree(t, nid)
        acc = check_acc(t, nid) if nid != -1 else None
        if acc is None:
            continue
        sums[nid] += sum(acc)
        sums[t.nodes[nid].parent] += sums[nid]
    return sums


def _compare(t: SlotTree, sums: dict[int, int], xid: int, yid: int, gap: str, judge: Judge | None,
             stance: Stance | None, rule: str, result: MineResult) -> str | None:
    """One sibling comparison (§2.4); returns the drop reason, or None after appending a pair."""
    x, y = t.nodes[xid], t.nodes[yid]
    if len(x.children) != len(y.children):
        return "reference_children_differ"
    ax, ay = check_acc(t, xid), check_acc(t, yid)
    if ax is None or ay is None:
        return "reference_missing_answer"
    if sum(ax) == 2 and sum(ay) == 2:
        return "reference_both_fully_correct"
    hi, lo = max(sums[xid], sums[yid]), min(sums[xid], sums[yid])
    if hi == lo or hi == 0:
        return "reference_equal_scores"
    rel = (hi - lo) / hi
    if not (rel > 0.5 or (gap == ">=" and rel >= 0.5)):
        return "reference_gap_below_threshold"
    pref, dis = (x, y) if sums[xid] > sums[yid] else (y, x)
    code = _code(t, pref, dis)
    if stance is not None:  # model filtering: the code must be confirmed, so None codes always fail
        if code is None or not _confirm(code, pref.text, dis.text, stance):
            return "reference_judge_rejected"
    kind = {"resist": RESIST, "agree": ACCEPT}.get(code, UNLABELED)
    result.pairs.append(_pair(t, kind, rule, pref, dis, (float(sums[pref.id]), float(sums[dis.id]))))
    return None


def _code(t: SlotTree, pref: SlotNode, dis: SlotNode) -> str | None:
    """``filter_by_agree_or_resist`` (§2.5), with its in-place ``handle_agree``."""
    p = t.nodes[pref.parent]
    if p.id == -1 or None in p.slots:
        return None
    for node in (p, pref, dis):
        node.slots = handle_agree(node.slots)
    accs = [check_acc(t, n.id) for n in (p, pref, dis)]
    if any(a is None for a in accs):
        return None
    s_p, s_pref, _ = (sum(a) for a in accs)
    g = t.nodes[p.parent]
    if g.id == -1:
        return None
    g_acc = check_acc(t, g.id)
    if g_acc is None or g.slots[pref.agent] is None:
        return None
    g_correct = g_acc[g.agent]
    pref_correct, dis_correct = accs[1][pref.agent], accs[2][dis.agent]
    if s_p == s_pref and g_correct and pref_correct and not dis_correct:
        return "resist"
    if s_p < s_pref and not g_correct and pref_correct and not dis_correct:
        return "agree"
    return None


def _confirm(code: str, pref_text: str, dis_text: str, stance: Stance) -> bool:
    """``confirm_code`` (§2.7): the preferred reply's stance must fit the code, the other's the opposite."""
    want = {"agree": ("agree", "disagree"), "resist": ("disagree", "agree")}[code]
    return (stance(pref_text), stance(dis_text)) == want


def _own(node: SlotNode, rule: str) -> Any:
    """The answer the node itself wrote (slot 1 - agent as grown; slot agent after the swap)."""
    return node.slots[node.agent if rule == "reference-agent" else 1 - node.agent]


def _pair(t: SlotTree, kind: str, rule: str, pref: SlotNode, dis: SlotNode, scores: tuple[float, float]) -> Pair:
    p = t.nodes[pref.parent]
    path, nid = [], p.id
    while nid != -1:
        node = t.nodes[nid]
        path.append(("A" if node.agent == 0 else "B", node.text))
        nid = node.parent
    path.reverse()
    persuadee = "A" if pref.agent == 0 else "B"
    persuader = "B" if persuadee == "A" else "A"
    g = t.nodes[p.parent] if p.parent != -1 else None
    text = lambda v: None if v is None else str(v)  # noqa: E731
    return Pair(
        type=kind, rule=rule, tree_id=t.tree_id, question_id=t.question_id, question=t.question, gold=list(t.gold),
        prompt=prompt_messages(t.question, None, path, persuadee),
        chosen=reply_message(pref.text), rejected=reply_message(dis.text),
        style=p.family, depth=pref.depth, parent_node=p.id, chosen_node=pref.id, rejected_node=dis.id,
        chosen_family=pref.family, rejected_family=dis.family,
        persuadee_before=text(_own(g, rule)) if g is not None and g.agent == pref.agent else None,
        persuader_answer=text(_own(p, rule)), chosen_answer=text(_own(pref, rule)), rejected_answer=text(_own(dis, rule)),
        persuader_model=t.models.get(persuader, ""), persuadee_model=t.models.get(persuadee, ""),
        chosen_score=scores[0], rejected_score=scores[1], source=t.source,
    )

