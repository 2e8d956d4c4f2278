"""The dialogue tree: nodes keyed by speaker, one Arrow row per tree, versioned.

A tree holds every generated turn of the persuasion dialogues about one question. Each node records
its own speaker's answer only; "the two agents' latest answers" after a node are derived by walking
the path (:func:`latest_answers`), so nothing depends on a two-slot convention (PBT_SPEC.md §0.1).

Node ids are assigned in breadth-first creation order (0 is the first turn); ``parent`` is -1 for the
first turn. The Arrow schema (:data:`TREE_SCHEMA`) carries ``schema_version``; readers reject versions
they do not know instead of misreading them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# 2: nodes record which step of the answer instrument read them (``read_by``).
# 3: choices / models / roles are lists of {key, value} instead of Arrow maps, which `datasets` cannot load.
SCHEMA_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)  # version-1 trees load with ``read_by`` None; 1-2 keep their Arrow maps

SPEAKERS = ("A", "B")
ROLES = ("persuader", "persuadee", "independent")
OUTCOMES = ("answer", "agree", "disagree", "none")  # what the extractor found in a turn
TREE_STATUSES = ("complete", "failed")


class TreeSchemaError(ValueError):
    """A stored tree does not match the schema; the message says which tree and field."""


@dataclass
class Node:
    id: int
    parent: int  # -1 for the first turn
    depth: int
    speaker: str  # "A" or "B"
    role: str  # persuader | persuadee | independent (saw no partner turn)
    family: str  # prompt family: rp ap lp ep cp sp (dialogue/prompts.py)
    text: str = ""
    raw_answer: str | None = None  # what the extractor wrote after "Final Answer:"
    outcome: str = "none"  # answer | agree | disagree | none
    answer: str | None = None  # the speaker's answer after resolving agree/disagree, normalized; None = no answer
    correct: bool | None = None  # answer matches the gold answers; None before extraction
    agree: bool = False  # both agents' latest answers are equal after this turn (the branch stops)
    finish_reason: str | None = None
    completion_tokens: int = 0
    read_by: str | None = None  # rule | constrained | prompt | empty: the instrument's step that read the answer


@dataclass
class Tree:
    tree_id: str
    question_id: str
    question: str
    gold: list[str]
    mode: str  # "train" (persuasion families, sampled) or "eval" (standard prompt, greedy, one branch)
    models: dict[str, str]  # {"A": model id, "B": model id, "extractor": model id}
    roles: dict[str, str]  # {"persuader": "A"|"B", "persuadee": "B"|"A"}
    seed: int
    choices: dict[str, str] | None = None
    source: str = ""
    nodes: list[Node] = field(default_factory=list)
    status: str = "complete"
    error: str | None = None
    generated_tokens: int = 0
    requests: int = 0
    seconds: float = 0.0
    schema_version: int = SCHEMA_VERSION

    # ---- structure ---------------------------------------------------------------------------

    def children(self, node_id: int) -> list[Node]:
        return [n for n in self.nodes if n.parent == node_id]

    def path(self, node_id: int) -> list[Node]:
        """Nodes from the first turn down to ``node_id``, inclusive."""
        by_id = {n.id: n for n in self.nodes}
        out = []
        current = by_id.get(node_id)
        while current is not None:
            out.append(current)
            current = by_id.get(current.parent)
        return out[::-1]

    def leaves(self) -> list[Node]:
        parents = {n.parent for n in self.nodes}
        return [n for n in self.nodes if n.id not in parents]

    def depth_counts(self) -> list[int]:
        counts: dict[int, int] = {}
        for n in self.nodes:
            counts[n.depth] = counts.get(n.depth, 0) + 1
        return [counts[d] for d in sorted(counts)]


def latest_answers(path: list[Node]) -> dict[str, str | None]:
    """Each speaker's latest answer after the last node of ``path`` (None where it has none yet)."""
    latest: dict[str, str | None] = {s: None for s in SPEAKERS}
    for node in path:
        latest[node.speaker] = node.answer
    return latest


def resolve_answer(node: Node, path: list[Node], gold: list[str], choices: dict[str, str] | None = None,
                   answer_text: str | None = None) -> None:
    """Set ``node.answer``, ``correct`` and ``agree`` from its extraction outcome and the path before it.

    Agree takes the partner's latest answer, Disagree keeps the speaker's own previous one, NONE is no
    answer (and incorrect). ``answer_text`` is the extracted answer (default: ``node.raw_answer``). The one
    rule for grown and imported trees alike.
    """
    from pbt_ray.answers import is_correct, resolve, same_answer

    before = latest_answers(path)
    partner = "B" if node.speaker == "A" else "A"
    node.answer = resolve(node.outcome, node.raw_answer if answer_text is None else answer_text,
                          own_previous=before[node.speaker], partner_latest=before[partner], choices=choices)
    node.correct = is_correct(node.answer, gold, choices)
    after = {**before, node.speaker: node.answer}
    node.agree = same_answer(after["A"], after["B"])


# ---- Arrow rows ------------------------------------------------------------------------------


def tree_schema():
    import pyarrow as pa

    node = pa.struct([
        ("id", pa.int32()), ("parent", pa.int32()), ("depth", pa.int32()),
        ("speaker", pa.string()), ("role", pa.string()), ("family", pa.string()),
        ("text", pa.string()), ("raw_answer", pa.string()), ("outcome", pa.string()),
        ("answer", pa.string()), ("correct", pa.bool_()), ("agree", pa.bool_()),
        ("finish_reason", pa.string()), ("completion_tokens", pa.int32()), ("read_by", pa.string()),
    ])
    # A string -> string mapping as a list of {key, value}: an Arrow map would be one type less, but
    # `datasets.load_dataset("parquet")` cannot load map columns (issue 17), and trees should load anywhere.
    mapping = pa.list_(pa.struct([("key", pa.string()), ("value", pa.string())]))
    return pa.schema([
        ("schema_version", pa.int32()),
        ("tree_id", pa.string()), ("question_id", pa.string()), ("question", pa.string()),
        ("gold", pa.list_(pa.string())),
        ("choices", mapping),
        ("source", pa.string()), ("mode", pa.string()),
        ("models", mapping),
        ("roles", mapping),
        ("seed", pa.int64()),
        ("nodes", pa.list_(node)),
        ("status", pa.string()), ("error", pa.string()),
        ("generated_tokens", pa.int64()), ("requests", pa.int64()), ("seconds", pa.float64()),
    ])


def to_row(tree: Tree) -> dict[str, Any]:
    row = dataclasses.asdict(tree)
    for key in MAPPINGS:
        row[key] = None if row[key] is None else [{"key": k, "value": v} for k, v in row[key].items()]
    return row


MAPPINGS = ("choices", "models", "roles")


def _mapping(value) -> dict[str, str] | None:
    """A mapping column as written by any schema version: {key, value} records (3), the (key, value) pairs of an
    Arrow map (1-2), or already a dict."""
    if value is None or isinstance(value, dict):
        return value
    return dict((item["key"], item["value"]) if isinstance(item, dict) else tuple(item) for item in value)


def from_row(row: dict[str, Any]) -> Tree:
    """Rebuild a tree from an Arrow/pandas row; raises :class:`TreeSchemaError` on anything off."""
    tree_id = row.get("tree_id", "<unknown>")
    version = row.get("schema_version")
    if version is None and "nodes" not in row:  # e.g. a pairs or questions file passed as trees
        raise TreeSchemaError(f"tree {tree_id}: not a tree row (no schema_version, no nodes; has "
                              f"{', '.join(sorted(map(str, row))[:8])}); pass trees written by `pbt grow`")
    if version not in READABLE_VERSIONS:
        raise TreeSchemaError(f"tree {tree_id}: schema_version {version!r}, this pbt-ray reads "
                              f"{', '.join(map(str, READABLE_VERSIONS))}")
    try:
        data = {f.name: row[f.name] for f in dataclasses.fields(Tree) if f.name in row}
        for key in MAPPINGS:
            data[key] = _mapping(data.get(key))
        data["gold"] = list(data["gold"])
        data["nodes"] = [Node(**dict(n)) for n in (row.get("nodes") if row.get("nodes") is not None else [])]
        tree = Tree(**data)
    except (KeyError, TypeError, ValueError) as exc:
        raise TreeSchemaError(f"tree {tree_id}: {exc}") from None
    validate(tree)
    return tree


def validate(tree: Tree) -> None:
    """Structural checks: ids, parents, speakers, roles; raises :class:`TreeSchemaError`."""
    where = f"tree {tree.tree_id}"
    ids = [n.id for n in tree.nodes]
    if len(set(ids)) != len(ids):
        raise TreeSchemaError(f"{where}: duplicate node ids")
    known = set(ids) | {-1}
    for n in tree.nodes:
        if n.parent not in known or n.parent == n.id:
            raise TreeSchemaError(f"{where}: node {n.id} has unknown parent {n.parent}")
        if n.speaker not in SPEAKERS or n.role not in ROLES or n.outcome not in OUTCOMES:
            raise TreeSchemaError(f"{where}: node {n.id} has speaker/role/outcome {n.speaker}/{n.role}/{n.outcome}")
    parent_of = {n.id: n.parent for n in tree.nodes}
    reaches_root: set[int] = {-1}
    for n in tree.nodes:  # every parent chain must end at the first turn; a loop never does
        chain, current = [], n.id
        while current not in reaches_root:
            if current in chain:
                raise TreeSchemaError(f"{where}: node {n.id}'s parent links form a cycle through node {current}")
            chain.append(current)
            current = parent_of[current]
        reaches_root.update(chain)
    if tree.status not in TREE_STATUSES:
        raise TreeSchemaError(f"{where}: status {tree.status!r}")
