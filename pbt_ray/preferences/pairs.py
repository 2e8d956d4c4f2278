"""A preference pair: TRL's conversational format plus the provenance of every field.

``prompt`` is the dialogue up to the persuasion turn as chat messages from the persuadee's side (its own
turns are ``assistant``, the partner's ``user``), opened by the neutral instruction of PBT_SPEC.md §2.9
and ending with the persuader's turn; ``chosen`` and ``rejected`` are one assistant message each. No chat
template is applied here: the trained model's template is applied at training time, so one pairs file
trains any model (the reference baked Llama/Mistral special tokens into its data, §7.2).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pbt_ray.dialogue.prompts import neutral_instruction

# The pair types. Only resist and accept are ever trained on; the others are kept for inspection.
RESIST, ACCEPT = "resist", "accept"
THIRD_ANSWER = "third_answer"  # persuadee wrong, persuader wrong, a reply right (the reference counts it as accept)
ALIAS_MISMATCH = "alias_mismatch"  # an answer on the path is a near miss of a gold alias: review, do not train
UNLABELED = "unlabeled"  # reference rule: a sibling pair its code labels neither resist nor accept
TRAINABLE = (RESIST, ACCEPT)


@dataclass
class Reply:
    node: int
    text: str
    family: str  # the persuadee's instruction family when it replied (rp / ap)
    answer: str | None  # resolved answer (canonical rule) or the slot value (reference rule)


@dataclass
class Pair:
    type: str
    rule: str  # canonical | reference-published | reference-agent
    tree_id: str
    question_id: str
    question: str
    gold: list[str]
    prompt: list[dict[str, str]]
    chosen: list[dict[str, str]]
    rejected: list[dict[str, str]]
    style: str  # persuasion family of the persuader's turn (lp / ep / cp)
    depth: int  # depth of the two replies
    parent_node: int  # the persuader's turn both replies answer
    chosen_node: int
    rejected_node: int
    chosen_family: str
    rejected_family: str
    persuadee_before: str | None  # the persuadee's answer before the persuasion turn
    persuader_answer: str | None
    chosen_answer: str | None
    rejected_answer: str | None
    persuader_model: str
    persuadee_model: str
    chosen_score: float | None = None  # reference rule: sum-tree scores
    rejected_score: float | None = None
    choices: dict[str, str] | None = None
    source: str = ""
    pair_id: str = field(default="")

    def __post_init__(self) -> None:
        if not self.pair_id:
            self.pair_id = f"{self.tree_id}:{self.parent_node}:{self.chosen_node}>{self.rejected_node}"


def prompt_messages(question: str, choices: dict[str, str] | None, path: list[tuple[str, str]],
                    persuadee: str) -> list[dict[str, str]]:
    """Chat messages of ``path`` ((speaker, text) from the first turn to the persuasion turn) as the
    persuadee sees it, after the neutral instruction; consecutive messages of one role are merged so the
    roles alternate (user first, user last)."""
    messages = [{"role": "user", "content": neutral_instruction(question, choices)}]
    for speaker, text in path:
        role = "assistant" if speaker == persuadee else "user"
        if messages[-1]["role"] == role:
            messages[-1] = {"role": role, "content": messages[-1]["content"] + "\n\n" + text}
        else:
            messages.append({"role": role, "content": text})
    return messages


def reply_message(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


# ---- Arrow -----------------------------------------------------------------------------------------


def pair_schema():
    import pyarrow as pa

    message = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    fields = [
        ("prompt", message), ("chosen", message), ("rejected", message),
        ("type", pa.string()), ("rule", pa.string()), ("pair_id", pa.string()),
        ("tree_id", pa.string()), ("question_id", pa.string()), ("question", pa.string()),
        ("gold", pa.list_(pa.string())),
        # a list of structs, not an Arrow map: `datasets` has no feature type for maps
        ("choices", pa.list_(pa.struct([("label", pa.string()), ("text", pa.string())]))),
        ("style", pa.string()), ("depth", pa.int32()), ("parent_node", pa.int32()),
        ("chosen_node", pa.int32()), ("rejected_node", pa.int32()),
        ("chosen_family", pa.string()), ("rejected_family", pa.string()),
        ("persuadee_before", pa.string()), ("persuader_answer", pa.string()),
        ("chosen_answer", pa.string()), ("rejected_answer", pa.string()),
        ("persuader_model", pa.string()), ("persuadee_model", pa.string()),
        ("chosen_score", pa.float64()), ("rejected_score", pa.float64()),
        ("source", pa.string()), ("split", pa.string()),
    ]
    return pa.schema(fields)


def to_row(pair: Pair, split: str | None = None) -> dict[str, Any]:
    row = dataclasses.asdict(pair)
    row["choices"] = None if pair.choices is None else [{"label": k, "text": v} for k, v in pair.choices.items()]
    row["split"] = split
    return row


def from_row(row: dict[str, Any]) -> Pair:
    data = {f.name: row[f.name] for f in dataclasses.fields(Pair) if f.name in row}
    data["choices"] = None if data.get("choices") is None else {c["label"]: c["text"] for c in data["choices"]}
    for key in ("prompt", "chosen", "rejected"):
        data[key] = [dict(m) for m in data[key]]
    data["gold"] = list(data["gold"])
    return Pair(**data)


def write_pairs(pairs: list[Pair], path, splits: dict[str, str] | None = None) -> None:
    """One Parquet file of pairs (``splits`` maps question id -> split name for the ``split`` column)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [to_row(p, (splits or {}).get(p.question_id)) for p in pairs]
    pq.write_table(pa.Table.from_pylist(rows, schema=pair_schema()), path)


class PairsFileError(ValueError):
    """A pairs file that cannot be read as pairs; the message names the file (and the row) and what to do."""


def read_pairs(path) -> list[Pair]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - truncated, not Parquet, unreadable: one clear error
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise PairsFileError(f"{path}: not a readable Parquet file ({first[:200]}); mine it again with `pbt mine`") from None
    required = [f.name for f in dataclasses.fields(Pair)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if rows and name not in rows[0]]
    if missing:
        raise PairsFileError(f"{path}: not pairs written by `pbt mine` (no column {', '.join(missing[:6])}"
                             f"{' ...' if len(missing) > 6 else ''}); mine the trees again with `pbt mine`")
    pairs = []
    for number, row in enumerate(rows):
        try:
            pairs.append(from_row(row))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PairsFileError(f"{path} row {number}: not a pair written by `pbt mine` ({type(exc).__name__}: {exc}; "
                                 f"columns: {', '.join(sorted(row)[:8])})") from None
    return pairs
