"""Question sources: the bundled sets, local files with bad rows, and hub row mapping."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pbt_ray.questions import QuestionFileError, _map_hub_row, load_bundled, load_questions


def test_bundled_sets_load_with_unique_ids():
    trivia = load_bundled("trivia")
    mc = load_bundled("commonsense")
    assert len(trivia) >= 300 and len(mc) >= 100
    assert trivia[0].question == "What is the capital of France?" and trivia[0].answers == ["Paris"]
    for questions in (trivia, mc):
        assert len({q.id for q in questions}) == len(questions)
    assert all(q.choices and set(q.answers) <= set(q.choices) for q in mc)
    assert len(load_questions("bundled:trivia", limit=16).questions) == 16


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def test_bad_rows_are_reported_with_file_and_row_and_skipped(tmp_path):
    path = tmp_path / "qs.jsonl"
    write_jsonl(path, [
        {"id": "1", "question": "Capital of France?", "answers": ["Paris"]},
        "{not json",
        {"id": "2", "question": "", "answers": ["x"]},
        {"id": "3", "question": "Pick", "answers": ["Z"], "choices": {"A": "a", "B": "b"}},
        {"id": "1", "question": "Again?", "answers": ["y"]},
        ["a", "list"],
        {"id": "4", "question": "Who wrote Hamlet?", "answers": ["Shakespeare"], "extra_field": "ignored"},
    ])
    loaded = load_questions(str(path))
    assert [q.id for q in loaded.questions] == ["1", "4"]
    problems = "\n".join(loaded.problems)
    assert len(loaded.problems) == 5
    for row, text in [(2, "not valid JSON"), (3, "question"), (4, "not labels of choices"), (5, "duplicate id '1'"),
                      (6, "expected an object")]:
        assert f"{path} row {row}: " in problems and text in problems


def test_bad_rows_can_fail_the_run(tmp_path):
    path = tmp_path / "qs.jsonl"
    write_jsonl(path, [{"id": "1", "question": "Q?", "answers": ["a"]}, "{not json"])
    with pytest.raises(QuestionFileError, match=r"qs.jsonl row 2: not valid JSON .*grow.on_bad_row=skip"):
        load_questions(str(path), on_bad_row="fail")


def test_parquet_and_missing_or_empty_sources(tmp_path):
    path = tmp_path / "qs.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "p1", "question": "Q?", "answers": ["a"]}]), path)
    assert [q.id for q in load_questions(str(path)).questions] == ["p1"]
    with pytest.raises(QuestionFileError, match="does not exist"):
        load_questions(str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty.jsonl").write_text("{broken\n")
    with pytest.raises(QuestionFileError, match="No usable questions"):
        load_questions(str(tmp_path / "empty.jsonl"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(QuestionFileError, match=".jsonl or .parquet"):
        load_questions(str(tmp_path / "x.csv"))
    with pytest.raises(QuestionFileError, match="Unknown bundled question set"):
        load_questions("bundled:nope")


def test_hub_rows_map_to_our_schema():
    trivia = _map_hub_row("mandarjoshi/trivia_qa", {
        "question_id": "tc_1", "question": "Who wrote Paradise Lost?",
        "answer": {"value": "John Milton", "aliases": ["John Milton", "Milton"], "normalized_aliases": ["john milton"]}})
    assert (trivia.id, trivia.answers, trivia.choices) == ("tc_1", ["John Milton", "Milton"], None)
    mc = _map_hub_row("tau/commonsense_qa", {
        "id": "c1", "question": "Where is milk kept?", "answerKey": "B",
        "choices": {"label": ["A", "B"], "text": ["oven", "fridge"]}})
    assert (mc.answers, mc.choices) == (["B"], {"A": "oven", "B": "fridge"})


def test_question_ids_select_in_source_order_then_limit_and_name_what_is_missing():
    from pbt_ray.questions import select_questions

    picked = load_questions("bundled:commonsense", ids=["commonsense-031", "commonsense-006", "commonsense-021"])
    assert [q.id for q in picked.questions] == ["commonsense-006", "commonsense-021", "commonsense-031"]
    limited = load_questions("bundled:commonsense", limit=2, ids=["commonsense-031", "commonsense-006", "commonsense-021"])
    assert [q.id for q in limited.questions] == ["commonsense-006", "commonsense-021"]
    every = load_bundled("commonsense")
    assert select_questions(every, None, 3) == every[:3] and select_questions(every, None, None) == every
    with pytest.raises(QuestionFileError, match=r"grow.question_ids: commonsense-999 not in bundled:commonsense \(1 of 2"):
        load_questions("bundled:commonsense", ids=["commonsense-006", "commonsense-999"])


def test_held_out_questions_exclude_the_selected_ids():
    from pbt_ray.config import load_config
    from pbt_ray.evaluation.stage import held_out_questions

    ids = ["commonsense-006", "commonsense-021"]
    cfg = load_config("local", [f"grow.question_ids=[{','.join(ids)}]", "eval.limit=null",
                                "eval.held_out=not-grown-or-test"])
    test, every = held_out_questions(cfg)
    assert not {q.id for q in test} & set(ids) and len(test) == len(every) - 2
    assert "commonsense-001" in {q.id for q in test}  # no longer taken by grow.limit=32
