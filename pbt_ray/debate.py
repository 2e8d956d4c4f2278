"""A short two-agent debate on one question, printed turn by turn (the demo of `pbt run`).

The persuadee answers first on its own; then the persuader answers and argues for its answer; then
they alternate. Each agent sees the exchange from its own side: its turns as ``assistant``, the
other's as ``user``, after a first ``user`` message with its instruction and the question. (This is the
intended layout of PBT_SPEC.md §1.5, without the reference's role shuffling.) Growing full persuasion
trees is the job of ``pbt grow``; this module is one linear branch of such a tree.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

PERSUADEE, PERSUADER = "persuadee", "persuader"

_PREAMBLE = (
    "You will be asked a trivia question. Answer it as well as you can, say how sure you are, and give "
    "your reason. Reply in one or two sentences and stay on the question."
)
INSTRUCTIONS = {
    PERSUADEE: _PREAMBLE + " Another agent may reply with its own answer; weigh what it says before you answer again.",
    PERSUADER: _PREAMBLE + " Another agent has answered too. If you think its answer is wrong, convince it with "
    "clear, logical reasons why your answer is right.",
}


@dataclass(frozen=True)
class Turn:
    index: int
    speaker: str  # role name, also the model id the request is sent to
    model: str  # the served model that answered
    text: str


def speaker_at(turn: int) -> str:
    return PERSUADEE if turn % 2 == 0 else PERSUADER


def messages_for(speaker: str, question: str, history: list[Turn]) -> list[dict[str, str]]:
    """Chat messages for ``speaker``'s next turn given the turns so far."""
    messages = [{"role": "user", "content": f"{INSTRUCTIONS[speaker]}\n\nQuestion: {question}"}]
    for turn in history:
        role = "assistant" if turn.speaker == speaker else "user"
        if messages[-1]["role"] == role:  # keep strict user/assistant alternation
            messages[-1] = {"role": role, "content": messages[-1]["content"] + "\n\n" + turn.text}
        else:
            messages.append({"role": role, "content": turn.text})
    if messages[-1]["role"] == "assistant":
        # The persuader's first turn follows the persuadee's answer, so this happens only when a speaker
        # would reply to itself; ask it to continue rather than send a dangling assistant turn.
        messages.append({"role": "user", "content": "Please continue."})
    return messages


def clean(text: str) -> str:
    """Trim whitespace and a dangling unfinished sentence; an empty reply stays empty (never crashes)."""
    text = " ".join(text.split())
    if text and text[-1] not in ".!?\"'":
        cut = max(text.rfind(p) for p in ".!?")
        if cut > 0:
            text = text[: cut + 1]
    return text


Chat = Callable[[str, list[dict[str, str]]], Awaitable[tuple[str, str]]]
"""(role/model id, messages) -> (reply text, served model id)."""


async def hold_debate(question: str, turns: int, chat: Chat, on_turn: Callable[[Turn], None] | None = None) -> list[Turn]:
    history: list[Turn] = []
    for index in range(turns):
        speaker = speaker_at(index)
        text, model = await chat(speaker, messages_for(speaker, question, history))
        turn = Turn(index=index, speaker=speaker, model=model, text=clean(text) or "(no answer)")
        history.append(turn)
        if on_turn:
            on_turn(turn)
    return history


def format_turn(turn: Turn) -> str:
    return f"[turn {turn.index + 1}] {turn.speaker} ({turn.model}):\n    {turn.text}"
