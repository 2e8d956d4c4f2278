"""Prompt families, in our own words (PBT_SPEC.md §1.3 describes the reference's; the wording differs).

Every turn opens with a shared preamble (answer the trivia question, show how sure you are and why), a
length and topic limit, and the question. The family's instruction is appended to
the last user message, so it is the only part in which sibling turns differ. The standard family
(``sp``) adds nothing and is used for evaluation dialogues.
"""

from __future__ import annotations

PREAMBLE = (
    "You are answering a trivia question together with another agent. Give your best answer, and make "
    "clear how confident you are and why you believe you are right."
)
LIMITS = (
    "Answer in one or two sentences, with more than one word. Stay on this question: do not ask new "
    "questions or change the subject."
)
FAMILIES: dict[str, str] = {
    # persuadee families
    "rp": "Hold your ground: the other agent is wrong and your answer is right. Do not change your answer, "
    "even if the other agent insists.",
    "ap": "The other agent is much more knowledgeable than you and is always right. Go along with its "
    "answer wherever you can.",
    # persuader families
    "lp": "If the other agent disagrees with you, its answer is wrong and yours is right: win it over with "
    "logic. Explain step by step why your answer holds and why it should accept it.",
    "ep": "If the other agent disagrees with you, its answer is wrong and yours is right: win it over with "
    "an emotional appeal. Give it a heartfelt reason to agree with you.",
    "cp": "If the other agent disagrees with you, its answer is wrong and yours is right: win it over by "
    "establishing your credibility. Explain why you know this subject well.",
    # evaluation
    "sp": "",
}
PERSUADEE_FAMILIES = ("rp", "ap")
PERSUADER_FAMILIES = ("lp", "ep", "cp")
FAMILY_NAMES = {"rp": "resist", "ap": "accept", "lp": "logical appeal", "ep": "emotional appeal",
                "cp": "credibility appeal", "sp": "standard", "unknown": "?"}


def opening(question: str, choices: dict[str, str] | None = None) -> str:
    """The first user message of every turn of a tree: preamble, limits (training) and the question.

    It is the same for every node of a tree, and the family instruction comes last (:func:`family_note`),
    so sibling turns share their whole transcript as a cacheable prefix.
    """
    # The length limit applies in both modes: the reference's standard prompt omits it, but without it
    # small models loop under greedy decoding ("I'm ready to help. I'm ready to help. ...").
    text = f"{PREAMBLE} {LIMITS}\n\nQuestion: {question}"
    if choices:
        text += "\nChoices: " + "; ".join(f"({label}) {choice}" for label, choice in choices.items())
        text += "\nAnswer with the letter of one choice and its text."
    return text


def family_note(family: str) -> str:
    """The family's instruction, appended to the last user message before the speaker replies."""
    return FAMILIES.get(family, "")


def neutral_instruction(question: str, choices: dict[str, str] | None = None) -> str:
    """The first user message of a training prompt (DPO/SFT): the preamble and the question, no family
    instruction and no partner instruction, so the trained model learns when to resist or accept from the
    dialogue itself (PBT_SPEC.md §1.3, §2.9)."""
    text = f"{PREAMBLE}\nQuestion: {question}"
    if choices:
        text += "\nChoices: " + "; ".join(f"({label}) {choice}" for label, choice in choices.items())
    return text
