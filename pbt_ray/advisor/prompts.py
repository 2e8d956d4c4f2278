"""What the advisor and the receiver are asked (RECIPES.md section 2): the receiver sees the question, then the
signal as advice that may be wrong, then its instruction; the advisor is asked for a hint, not the answer."""

from __future__ import annotations

from pbt_ray.questions import Question

ADVISOR_TASK = ("You advise someone who will answer the question below. Write one short hint, one or two sentences, "
                "that helps them reason their way to the right answer. Do not state the answer itself.")
ANSWER_HOW = {
    "choice": "Answer with the letter of one choice and its text.",
    "numeric": "Work it out briefly, then end with: The answer is <number>.",
    "text": "Answer in a few words.",
}


def task_of(q: Question) -> str:
    """numeric (checked by the numeric rule) when every gold answer is a number and there are no choices."""
    from pbt_ray.advisor.checking import to_number

    if q.choices:
        return "choice"
    return "numeric" if all(to_number(a) is not None for a in q.answers) else "text"


def _question(q: Question) -> str:
    text = f"Question: {q.question}"
    if q.choices:
        text += "\nChoices: " + "; ".join(f"({label}) {choice}" for label, choice in q.choices.items())
    return text


def advisor_messages(q: Question) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{ADVISOR_TASK}\n\n{_question(q)}"}]


def receiver_messages(q: Question, signal: str | None) -> list[dict[str, str]]:
    advice = f"\nAdvice from a helper (it may be wrong): {signal}" if signal else ""
    return [{"role": "user", "content": f"{_question(q)}{advice}\n{ANSWER_HOW[task_of(q)]}"}]


def clean_signal(reply: str, max_words: int = 60) -> str:
    """The signal: the reply's first non-empty paragraph, at most ``max_words`` words."""
    para = next((p for p in reply.split("\n\n") if p.strip()), "")
    return " ".join(para.split()[:max_words])
