"""Questions: the schema, the bundled demo sets, local files and Hugging Face datasets.

Schema of a question row (a line of a .jsonl file, an item of a .json array, or a Parquet row)::

    {"id": "trivia-0001", "question": "What is the capital of France?", "answers": ["Paris"],
     "choices": null, "source": "..."}

``answers`` lists the accepted aliases (canonical first); for multiple choice, ``choices`` maps labels to
texts and ``answers`` holds the correct label(s). Malformed rows are reported with file and row, and
skipped or fatal as configured; a run ends with the count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

BUNDLED = {"trivia": "trivia_demo.jsonl", "commonsense": "commonsense_demo.jsonl"}


class Question(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1, description="Stable id; resume and provenance key on it.")
    question: str = Field(min_length=1)
    answers: list[str] = Field(min_length=1, description="Gold answer aliases, canonical first (labels for multiple choice).")
    choices: dict[str, str] | None = Field(None, description="Multiple-choice options by label, if any.")
    source: str = ""

    @model_validator(mode="after")
    def _check(self) -> Question:
        if not all(a.strip() for a in self.answers):
            raise ValueError("answers must not contain empty strings")
        if self.choices is not None and not set(self.answers) <= set(self.choices):
            raise ValueError(f"answers {self.answers} are not labels of choices {sorted(self.choices)}")
        return self


class QuestionFileError(ValueError):
    pass


@dataclass
class LoadedQuestions:
    questions: list[Question]
    problems: list[str] = field(default_factory=list)  # "file row N: what is wrong"


def load_questions(spec: str, limit: int | None = None, on_bad_row: str = "skip",
                   ids: list[str] | None = None) -> LoadedQuestions:
    """Load a question source (see ``GrowConfig.questions``); duplicates of an id are problems too. ``ids``: only
    these questions (``grow.question_ids``), in the source's order, then the first ``limit`` of them."""
    if ids:
        loaded = load_questions(spec, None, on_bad_row)
        loaded.questions = select_questions(loaded.questions, ids, limit, spec)
        return loaded
    if spec.startswith("bundled:"):
        name = spec.split(":", 1)[1]
        if name not in BUNDLED:
            raise QuestionFileError(f"Unknown bundled question set '{name}'; available: {', '.join(BUNDLED)}")
        text = resources.files("pbt_ray.data").joinpath(BUNDLED[name]).read_text()
        loaded = _from_rows(_jsonl_rows(text), BUNDLED[name], on_bad_row, limit)
    elif spec.startswith("hf:"):
        loaded = LoadedQuestions(_from_hub(spec[3:], limit))
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            what = "is a directory, not a question file" if path.is_dir() else "does not exist"
            raise QuestionFileError(f"Question file {path} {what} (grow.questions={spec!r}).")
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path)
            except Exception as exc:  # noqa: BLE001 - truncated, not Parquet, unreadable: one clear error
                raise QuestionFileError(f"{path}: not a readable Parquet file ({_first_line(exc)}); rewrite it, or "
                                        "export the questions as .jsonl") from None
            rows = enumerate(table.to_pylist(), start=1)
        elif path.suffix in (".jsonl", ".json"):
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise QuestionFileError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8 JSON lines") from None
            rows = _json_array_rows(text) if path.suffix == ".json" else None
            rows = rows if rows is not None else _jsonl_rows(text)
        else:
            raise QuestionFileError(f"{path}: questions must be .jsonl or .parquet (see pbt_ray/questions.py for the schema)")
        loaded = _from_rows(rows, str(path), on_bad_row, limit)
    if not loaded.questions:
        bad = loaded.problems
        raise QuestionFileError(f"No usable questions in {spec}" + (
            f": {len(bad)} bad row(s), the first: {bad[0]}" if bad else ": the file holds no rows"))
    return loaded


def select_questions(questions: list[Question], ids: list[str] | None, limit: int | None,
                     spec: str = "the question source") -> list[Question]:
    """What grow takes from a source: the questions named in ``ids`` (all if None), in the source's order, then
    the first ``limit``. The held-out evaluation questions are computed from the same selection."""
    if ids:
        wanted = set(ids)
        missing = [i for i in ids if i not in {q.id for q in questions}]
        if missing:
            raise QuestionFileError(f"grow.question_ids: {', '.join(missing[:5])} not in {spec} "
                                    f"({len(missing)} of {len(ids)} missing); check the ids or grow.questions")
        questions = [q for q in questions if q.id in wanted]
    return questions[:limit] if limit else questions


def _first_line(exc: Exception) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def _json_array_rows(text: str):
    """A ``.json`` file holding one JSON array of question objects (row N is the array's Nth item); None when the
    text is not one array, so it is read as JSON lines instead."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    return enumerate(data, start=1) if isinstance(data, list) else None


def load_bundled(name: str = "trivia") -> list[Question]:
    return load_questions(f"bundled:{name}", on_bad_row="fail").questions


def _jsonl_rows(text: str):
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, exc


def _from_rows(rows, where: str, on_bad_row: str, limit: int | None) -> LoadedQuestions:
    out = LoadedQuestions([])
    seen: set[str] = set()
    for number, row in rows:
        try:
            if isinstance(row, Exception):
                raise ValueError(f"not valid JSON ({row.msg})")
            if not isinstance(row, dict):
                raise ValueError(f"expected an object, got {type(row).__name__}")
            question = Question.model_validate(row)
            if question.id in seen:
                raise ValueError(f"duplicate id {question.id!r}")
        except (ValidationError, ValueError) as exc:
            problem = f"{where} row {number}: {_short(exc)}"
            if on_bad_row == "fail":
                raise QuestionFileError(problem + " (set grow.on_bad_row=skip to skip bad rows)") from None
            out.problems.append(problem)
            continue
        seen.add(question.id)
        out.questions.append(question)
        if limit is not None and len(out.questions) >= limit:
            break
    return out


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in exc.errors())
    return str(exc)


def _from_hub(spec: str, limit: int | None) -> list[Question]:
    """``<dataset>[:<config>[:<split>]]``; TriviaQA and CommonsenseQA rows are mapped to our schema."""
    parts = spec.split(":")
    name, config = parts[0], (parts[1] if len(parts) > 1 and parts[1] else None)
    split = parts[2] if len(parts) > 2 else "train"
    try:
        import datasets

        data = datasets.load_dataset(name, config, split=split if limit is None else f"{split}[:{limit}]")
    except Exception as exc:  # offline, gated, misspelt: all surface as one actionable message
        raise QuestionFileError(
            f"Could not load the Hugging Face dataset {name} ({config}, {split}): {exc.__class__.__name__}: "
            f"{str(exc)[:300]}. Without a hub, export the questions to a local .jsonl/.parquet file."
        ) from None
    return [_map_hub_row(name, row) for row in data]


def _map_hub_row(name: str, row: dict[str, Any]) -> Question:
    if "answerKey" in row and "choices" in row:  # tau/commonsense_qa
        choices = dict(zip(row["choices"]["label"], row["choices"]["text"]))
        return Question(id=row["id"], question=row["question"], answers=[row["answerKey"]], choices=choices, source=name)
    if "answer" in row and isinstance(row["answer"], dict):  # mandarjoshi/trivia_qa
        answer = row["answer"]
        aliases = [answer.get("value"), *answer.get("aliases", [])]
        unique = list(dict.fromkeys(a for a in aliases if a))
        return Question(id=row["question_id"], question=row["question"], answers=unique, source=name)
    if isinstance(row.get("answer"), str) and "####" in row["answer"] and "question" in row:  # openai/gsm8k
        import hashlib

        final = row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        key = hashlib.sha1(row["question"].encode()).hexdigest()[:12]
        return Question(id=f"gsm8k-{key}", question=row["question"], answers=[final], source=name)
    if "problem" in row and "answer" in row and "unique_id" in row:  # HuggingFaceH4/MATH-500
        return Question(id=str(row["unique_id"]), question=row["problem"], answers=[str(row["answer"])], source=name)
    raise QuestionFileError(f"Rows of {name} are neither TriviaQA, CommonsenseQA, GSM8K nor MATH-500 shaped; export "
                            "them to our schema.")
