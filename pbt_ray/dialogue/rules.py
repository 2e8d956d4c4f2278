"""Who speaks when, with which prompt families, what each speaker sees, and how turns are sampled.

The intended semantics of PBT_SPEC.md §1.4-1.7, without the reference's role off-by-one (§0.3):
speakers alternate A, B, A, B; the configured persuader gets persuasion families (lp, ep, cp), the
other speaker resist/accept families (rp, ap); the first turn uses ``first_family``. With the defaults
(A persuades, depth 4) a full tree has 1 + 2 + 6 + 12 = 21 turns, as in the paper. Choices are recorded
in docs/dialogue.md.
"""

from __future__ import annotations

import hashlib
import random

from pbt_ray.config import GrowConfig
from pbt_ray.dialogue.prompts import PERSUADEE_FAMILIES, PERSUADER_FAMILIES, family_note, opening
from pbt_ray.dialogue.tree import Node


def speaker_at(depth: int) -> str:
    return "A" if depth % 2 == 0 else "B"


def role_at(depth: int, cfg: GrowConfig) -> str:
    """persuader / persuadee, or independent for a turn that sees no partner turn."""
    if depth == 0 or (depth == 1 and cfg.independent_first):
        return "independent"
    return "persuader" if speaker_at(depth) == cfg.persuader else "persuadee"


def first_family(cfg: GrowConfig, tree_seed: int) -> str:
    if cfg.mode == "eval":
        return "sp"
    if cfg.first_family == "random":  # the reference's coin flip, but seeded per tree and recorded
        return random.Random(tree_seed).choice(["rp", "lp"])
    return cfg.first_family


def families_at(depth: int, cfg: GrowConfig, tree_seed: int) -> tuple[str, ...]:
    """The prompt families of the children a node at ``depth - 1`` gets (one child per family)."""
    if cfg.mode == "eval":
        return ("sp",)
    if depth == 0:
        return (first_family(cfg, tree_seed),)
    return PERSUADER_FAMILIES if speaker_at(depth) == cfg.persuader else PERSUADEE_FAMILIES


def full_tree_size(cfg: GrowConfig) -> int:
    """Turns in a tree where no branch stops early."""
    total, width = 0, 1
    for depth in range(cfg.depth):
        width *= len(families_at(depth, cfg, 0))
        total += width
    return total


def messages_for(family: str, question: str, path: list[Node], speaker: str, cfg: GrowConfig,
                 choices: dict[str, str] | None = None) -> list[dict[str, str]]:
    """Chat messages for ``speaker``'s next turn after ``path`` (root-to-parent turns).

    The opening (preamble and question, the same for the whole tree) is the first user message; the
    speaker's own earlier turns are assistant messages and the partner's are user messages, merged where
    two of one role meet, so the conversation alternates and ends with a user turn; the family's
    instruction is appended to that last user message. Siblings thus share everything but the instruction,
    which the engine's prefix cache turns into skipped prefill. The server's chat template adds the
    generation prompt. With ``independent_first``, the second speaker's first turn sees no partner turn.
    """
    messages = [{"role": "user", "content": opening(question, choices)}]
    if not (len(path) == 1 and cfg.independent_first):
        for node in path:
            role = "assistant" if node.speaker == speaker else "user"
            if messages[-1]["role"] == role:
                messages[-1] = {"role": role, "content": messages[-1]["content"] + "\n\n" + node.text}
            else:
                messages.append({"role": role, "content": node.text})
    note = family_note(family)
    if messages[-1]["role"] == "assistant":
        messages.append({"role": "user", "content": note or "Please give your answer again."})
    elif note:
        messages[-1] = {"role": "user", "content": messages[-1]["content"] + "\n\n" + note}
    return messages


def clean(text: str) -> str:
    """Collapse whitespace and cut a dangling unfinished sentence; an empty reply stays empty.

    Unlike the reference (§1.7), text without sentence punctuation is kept rather than emptied.
    """
    text = " ".join((text or "").split())
    if text and text[-1] not in ".!?\"')":
        cut = max(text.rfind(p) for p in ".!?")
        if cut > 0:
            text = text[: cut + 1]
    return text


def request_seed(base: int, tree_id: str, key: tuple[int, ...]) -> int:
    """A per-request seed from the run seed, the tree and the node's position: sampling is reproducible
    whatever order the requests happen to run in."""
    digest = hashlib.blake2b(f"{base}|{tree_id}|{key}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


# Every sampling field vLLM would otherwise take from the model's generation_config.json (request value ->
# server default -> OpenAI default; Llama-3.1-Instruct's file sets top_p 0.9), sent explicitly at the
# paper's values (PBT_SPEC.md §1.6: top_p 1.0, top_k disabled). Extraction requests send them too.
NEUTRAL_SAMPLING = {"top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}


def sampling(cfg: GrowConfig) -> dict:
    """A turn's request fields: training dialogues are sampled (T=0.7 by default), evaluation dialogues are
    greedy; both with the paper's top_p / top_k and at least ``grow.min_tokens`` new tokens (§1.6)."""
    extra = {**NEUTRAL_SAMPLING, "top_p": cfg.top_p, "top_k": cfg.top_k, "min_tokens": min(cfg.min_tokens, cfg.max_tokens)}
    return {"temperature": 0.0 if cfg.mode == "eval" else cfg.temperature, "max_tokens": cfg.max_tokens, "extra": extra}
