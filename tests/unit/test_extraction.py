"""The extraction prompt's shape and the parsing of extractor continuations."""

import pytest

from pbt_ray.dialogue.extraction import FEW_SHOT, PREFILL, REQUEST_OPTIONS, extraction_messages, parse


def test_prompt_is_few_shot_turns_then_a_prefilled_answer():
    messages = extraction_messages("Who wrote Hamlet?", "Shakespeare wrote it", {"A": "Marlowe", "B": "Shakespeare"})
    assert messages[0]["role"] == "system" and "Agree" in messages[0]["content"]
    assert len(messages) == 1 + 2 * len(FEW_SHOT) + 2
    assert messages[-1] == {"role": "assistant", "content": PREFILL}
    assert messages[-2]["content"].endswith("Reply: Shakespeare wrote it ...")  # cut-off marker
    assert "(B) Shakespeare" in messages[-2]["content"]
    assert REQUEST_OPTIONS["continue_final_message"] and not REQUEST_OPTIONS["add_generation_prompt"]


@pytest.mark.parametrize(
    ("continuation", "expected"),
    [
        (" Canberra", ("Canberra", "answer")),
        (" No, the answer to this question is Paris", ("Paris", "answer")),
        (" The correct answer is: John Milton.", ("John Milton", "answer")),
        (" The answer is not Sydney", (None, "none")),
        (" No, the answer is not Paris", (None, "none")),
        (" No, the answer to this question is not Paris", (None, "none")),
        (" Nothing", ("Nothing", "answer")),
        (" Agree", (None, "agree")),
        (" Disagree.", (None, "disagree")),
        (" NONE", (None, "none")),
        ("", (None, "none")),
        (" I believe the largest planet in our solar system is Jupiter, a gas giant", (None, "none")),
    ],
)
def test_parse(continuation, expected):
    assert parse(continuation) == expected
