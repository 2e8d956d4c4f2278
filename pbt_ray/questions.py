"""Questions: the schema and the bundled demo sets (package data in ``pbt_ray/data``)."""

from __future__ import annotations

import json
from importlib import resources

from pydantic import BaseModel, ConfigDict, Field, ValidationError

BUNDLED = {"trivia": "trivia_demo.jsonl", "commonsense": "commonsense_demo.jsonl"}


class Question(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1, description="Stable id; resume and provenance key on it.")
    question: str = Field(min_length=1)
    answers: list[str] = Field(min_length=1, description="Gold answer aliases, canonical first (letters for multiple choice).")
    choices: dict[str, str] | None = Field(None, description="Multiple-choice options by label, if any.")
    source: str = ""


class QuestionFileError(ValueError):
    pass


def load_bundled(name: str = "trivia") -> list[Question]:
    if name not in BUNDLED:
        raise QuestionFileError(f"Unknown bundled question set '{name}'; available: {', '.join(BUNDLED)}")
    text = resources.files("pbt_ray.data").joinpath(BUNDLED[name]).read_text()
    questions = []
    for row, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            questions.append(Question.model_validate(json.loads(line)))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise QuestionFileError(f"{BUNDLED[name]} row {row}: {exc}") from None
    return questions
