"""Optional stance check of mined pairs by the extractor model (PBT_SPEC.md §2.7, done differently).

The reference asks a judge whether the chosen reply is an "agreeing" or "disagreeing" response and keeps a
resist pair only if the chosen reply disagrees and the rejected one agrees (accept: the reverse). We ask
the served extractor the same question with the persuader's turn as context, a few-shot prompt in our own
words and a prefilled ``Stance:`` line (as in answer extraction), batched through the same client as
growth. A reply whose stance cannot be read counts as unconfirmed: the pair is dropped with a reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from pbt_ray.preferences.pairs import ACCEPT, RESIST, Pair

INSTRUCTIONS = """You read the last message of one speaker and the reply of another speaker in a discussion about a question.
Say whether the reply goes along with the first speaker's answer (agree) or keeps a different answer (disagree).
Answer with one word: agree or disagree."""
FEW_SHOT = [
    ("I am certain the capital of Australia is Canberra: it was chosen as a compromise between Sydney and Melbourne.",
     "You make a good point; Canberra it is.", "agree"),
    ("Trust me, the largest ocean is the Atlantic; I have sailed both.",
     "I still think it is the Pacific, which covers about a third of the Earth's surface.", "disagree"),
]
PREFILL = "Stance:"
REQUEST_OPTIONS = {"continue_final_message": True, "add_generation_prompt": False, "stop": ["\n"]}


def stance_messages(persuasion: str, reply: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": INSTRUCTIONS}]
    for first, answer, stance in FEW_SHOT:
        messages += [{"role": "user", "content": f"First speaker: {first}\nReply: {answer}"},
                     {"role": "assistant", "content": f"{PREFILL} {stance}"}]
    messages += [{"role": "user", "content": f"First speaker: {persuasion}\nReply: {reply}"},
                 {"role": "assistant", "content": PREFILL}]
    return messages


def parse_stance(text: str) -> str | None:
    word = (text or "").strip().strip(".:*").split()
    word = word[0].lower().strip(".,:;!*") if word else ""
    return word if word in ("agree", "disagree") else None


def wanted(pair: Pair) -> tuple[str, str] | None:
    """(chosen stance, rejected stance) a pair of this type should show."""
    return {RESIST: ("disagree", "agree"), ACCEPT: ("agree", "disagree")}.get(pair.type)


async def check_stances(pairs: list[Pair], classify: Callable[[str, str], Awaitable[str | None]],
                        concurrency: int = 64) -> tuple[list[Pair], list[tuple[Pair, str]]]:
    """Keep the resist/accept pairs whose replies show the stance of their type; others pass through.
    Returns (kept, [(dropped pair, reason)])."""
    gate = asyncio.Semaphore(concurrency)
    cache: dict[tuple[str, str], asyncio.Task] = {}

    async def one(persuasion: str, reply: str) -> str | None:
        async with gate:
            return await classify(persuasion, reply)

    def stance(persuasion: str, reply: str) -> asyncio.Task:
        key = (persuasion, reply)
        if key not in cache:
            cache[key] = asyncio.ensure_future(one(persuasion, reply))
        return cache[key]

    checked = [(p, stance(p.prompt[-1]["content"], p.chosen[0]["content"]),
                stance(p.prompt[-1]["content"], p.rejected[0]["content"])) for p in pairs if wanted(p)]
    await asyncio.gather(*cache.values())
    kept = [p for p in pairs if not wanted(p)]
    dropped = []
    for p, chosen, rejected in checked:
        got = (chosen.result(), rejected.result())
        if got == wanted(p):
            kept.append(p)
        else:
            dropped.append((p, "stance_unreadable" if None in got else "stance_unconfirmed"))
    return kept, dropped


def endpoint_classifier(client, model: str, max_tokens: int = 3) -> Callable[[str, str], Awaitable[str | None]]:
    """A classifier over a chat client (:mod:`pbt_ray.serving.client`) and the extractor's model id."""
    async def classify(persuasion: str, reply: str) -> str | None:
        result = await client.chat(model, stance_messages(persuasion, reply), temperature=0.0,
                                   max_tokens=max_tokens, extra=dict(REQUEST_OPTIONS))
        return parse_stance(result.text)

    return classify


def endpoint_stance_check(url: str, model: str, timeout_s: float = 300.0, concurrency: int = 64,
                          formats: dict[str, str] | None = None, api_key: str | None = None):
    """``mine(stance_check=...)`` against an OpenAI-compatible endpoint; the client lives in the check's loop.
    ``formats``: :func:`pbt_ray.serving.chat_format.chat_formats` (the prompt opens with a system message)."""
    async def run(pairs: list[Pair]):
        from pbt_ray.serving.client import ChatClient

        client = ChatClient(url, timeout_s=timeout_s, formats=formats, api_key=api_key)
        try:
            return await check_stances(pairs, endpoint_classifier(client, model), concurrency)
        finally:
            await client.close()

    return run
