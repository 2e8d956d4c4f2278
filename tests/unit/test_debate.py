"""The demo debate's turn order, message layout and cleaning, on a scripted engine."""

import asyncio

from pbt_ray.debate import PERSUADEE, PERSUADER, Turn, clean, hold_debate, messages_for, speaker_at


def test_speakers_alternate_starting_with_the_persuadee():
    assert [speaker_at(i) for i in range(4)] == [PERSUADEE, PERSUADER, PERSUADEE, PERSUADER]


def test_each_agent_sees_its_own_turns_as_assistant():
    history = [Turn(0, PERSUADEE, "m", "Paris."), Turn(1, PERSUADER, "m", "Lyon!"), Turn(2, PERSUADEE, "m", "Still Paris.")]
    first = messages_for(PERSUADEE, "Capital of France?", [])
    assert [m["role"] for m in first] == ["user"] and first[0]["content"].endswith("Question: Capital of France?")

    # The persuader's instruction and the persuadee's first answer share the first user message.
    persuader = messages_for(PERSUADER, "Q?", history)
    assert [m["role"] for m in persuader] == ["user", "assistant", "user"]
    assert persuader[0]["content"].endswith("Question: Q?\n\nParis.")
    assert [m["content"] for m in persuader[1:]] == ["Lyon!", "Still Paris."]

    persuadee = messages_for(PERSUADEE, "Q?", history[:2])
    assert [m["role"] for m in persuadee] == ["user", "assistant", "user"]
    assert persuadee[1]["content"] == "Paris." and persuadee[2]["content"] == "Lyon!"


def test_messages_always_alternate_and_end_with_user():
    history = [Turn(i, speaker_at(i), "m", f"t{i}") for i in range(5)]
    for speaker in (PERSUADEE, PERSUADER):
        roles = [m["role"] for m in messages_for(speaker, "Q?", history)]
        assert roles[-1] == "user"
        assert all(a != b for a, b in zip(roles, roles[1:]))


def test_clean_trims_dangling_fragments_and_survives_garbage():
    assert clean("  It is Paris.  I am sure because ") == "It is Paris."
    assert clean("Paris!") == "Paris!"
    assert clean("no punctuation at all") == "no punctuation at all"
    assert clean("") == ""
    assert clean("\n\n\t") == ""


def test_hold_debate_on_a_scripted_engine():
    calls = []

    async def chat(role, messages):
        calls.append((role, len(messages)))
        return ("" if len(calls) == 3 else f"Answer {len(calls)}."), "served-model"

    printed = []
    turns = asyncio.run(hold_debate("Q?", 4, chat, on_turn=printed.append))
    assert [t.speaker for t in turns] == [PERSUADEE, PERSUADER, PERSUADEE, PERSUADER]
    assert [c[1] for c in calls] == [1, 1, 3, 3]
    assert turns[2].text == "(no answer)"  # an empty generation never crashes the debate
    assert printed == turns and all(t.model == "served-model" for t in turns)
