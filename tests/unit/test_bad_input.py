"""Issue 16 (6), bad input: each malformed input is answered by one line that names what is wrong and where, with
a non-zero exit, never a traceback, and nothing already written lost or overwritten. docs/reliability.md lists
every input with the test that covers it.

Everything here runs without Ray or a model: the ``no_ray`` fixture makes starting a cluster fail the test, so a
check that moved behind `ray_cluster` shows up as a failure here, not as a cluster started on the test machine.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pbt_ray.cli import main

from .pbt_fixtures import fixture_tree, random_tree, write_ours


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    import pbt_ray.runtime

    def refuse(*_args, **_kwargs):
        raise AssertionError("bad input must be refused before Ray starts")

    monkeypatch.setattr(pbt_ray.runtime, "ray_cluster", refuse)


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the hash of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def kept(before: dict[str, str], root: Path) -> bool:
    """Every file of ``before`` is still there with the same bytes (a new empty lock file is not a change)."""
    after = snapshot(root)
    return all(after.get(name) == digest for name, digest in before.items())


def one_line(capsys, argv: list[str], code: int = 1) -> str:
    """Run `pbt ARGV`: it exits ``code`` and says why in exactly one line on stderr, without a traceback."""
    try:
        assert main(argv) == code
    except SystemExit as exit_:  # a usage error: argparse exits
        assert exit_.code == code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pbt") and "Traceback" not in err
    return lines[0]


@pytest.fixture
def run(tmp_path):
    """A run directory holding grown trees, mined pairs and a loop state: what bad input must never touch."""
    from pbt_ray.config import load_config
    from pbt_ray.preferences.mining import mine

    cfg = load_config("local", [f"runs_dir={tmp_path / 'runs'}"])
    (cfg.run_dir / "trees").mkdir(parents=True)
    write_ours(cfg.run_dir / "trees" / "part-a.parquet", [random_tree(random.Random(s), s) for s in range(40)])
    mine(cfg, trees=str(cfg.run_dir), out=str(cfg.run_dir / "preferences"), use_ray=False, log=lambda *_: None)
    (cfg.run_dir / "loop_state.json").write_text(json.dumps({"version": 2, "stages": {}}) + "\n")
    return cfg


def base(cfg) -> list[str]:
    return ["-c", "local", f"runs_dir={cfg.runs_dir}"]


# ---- question files (`pbt grow` checks them before Ray starts and before it records the command) ---------------

def _questions(tmp_path: Path, name: str, content) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, pa.Table):
        pq.write_table(content, path)
    else:
        path.write_text(content)
    return path


QUESTION_FILES = {
    "missing": (None, [], "does not exist"),
    "directory": ("dir/", [], "is a directory, not a question file"),
    "csv": ("q.csv", [], "questions must be .jsonl or .parquet"),
    "empty": ("q.jsonl", [], "No usable questions in"),
    "not-json": ("q.jsonl", [], "row 1: not valid JSON"),
    "bad-row-fail": ("q.jsonl", ["grow.on_bad_row=fail"], "row 2: not valid JSON"),
    "missing-field": ("q.jsonl", ["grow.on_bad_row=fail"], "row 1: answers: Field required"),
    "wrong-type": ("q.jsonl", ["grow.on_bad_row=fail"], "row 1: answers: Input should be a valid list"),
    "answer-not-a-choice": ("q.jsonl", ["grow.on_bad_row=fail"], "are not labels of choices"),
    "duplicate-id": ("q.jsonl", ["grow.on_bad_row=fail"], "row 2: duplicate id 'q1'"),
    "json-array": ("q.json", ["grow.on_bad_row=fail"], "q.json row 2: question: Field required"),
    "corrupt-parquet": ("q.parquet", [], "not a readable Parquet file"),
    "parquet-wrong-schema": ("q.parquet", [], "row 1: id: Field required"),
    "not-utf8": ("q.jsonl", [], "not UTF-8 text"),
    "unknown-bundled": ("bundled:nope", [], "Unknown bundled question set 'nope'"),
}
GOOD = {"id": "q1", "question": "Capital of France?", "answers": ["Paris"]}
CONTENT = {
    "empty": "",
    "not-json": "{not json\n",
    "bad-row-fail": json.dumps(GOOD) + "\n{not json\n",
    "missing-field": json.dumps({"id": "q1", "question": "Q?"}) + "\n",
    "wrong-type": json.dumps({"id": "q1", "question": "Q?", "answers": "Paris"}) + "\n",
    "answer-not-a-choice": json.dumps({"id": "q1", "question": "Q?", "answers": ["C"], "choices": {"A": "a"}}) + "\n",
    "duplicate-id": json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n",
    "json-array": json.dumps([GOOD, {"id": "q2", "answers": ["x"]}], indent=2),
    "corrupt-parquet": b"PAR1 truncated",
    "parquet-wrong-schema": pa.table({"text": ["Q?"], "label": ["A"]}),
    "not-utf8": b"\xff\xfe{\"id\": 1}\n",
    "csv": "id,question\n1,Q?\n",
}


@pytest.mark.parametrize("case", sorted(QUESTION_FILES))
def test_question_files(case, run, tmp_path, capsys):
    name, overrides, expected = QUESTION_FILES[case]
    if name is None:
        spec = str(tmp_path / "nowhere.jsonl")
    elif name.startswith("bundled:"):
        spec = name
    elif name.endswith("/"):
        (tmp_path / name).mkdir()
        spec = str(tmp_path / name)
    else:
        spec = str(_questions(tmp_path, name, CONTENT[case]))
    before = snapshot(run.run_dir)
    line = one_line(capsys, ["grow", *base(run), f"grow.questions={spec}", *overrides])
    assert line.startswith("pbt: error: ") and expected in line
    assert spec.rstrip("/") in line or case == "unknown-bundled"
    assert snapshot(run.run_dir) == before  # not even run.yaml: refused before the command was recorded


def test_a_json_array_of_questions_is_read_as_rows(tmp_path):
    """A .json file holding one array used to be read line by line, every line 'not valid JSON'."""
    from pbt_ray.questions import load_questions

    path = _questions(tmp_path, "q.json", json.dumps([GOOD, {**GOOD, "id": "q2"}], indent=2))
    assert [q.id for q in load_questions(str(path)).questions] == ["q1", "q2"]


# ---- tree files: `pbt view`, `pbt mine` ------------------------------------------------------------------------

def test_view_of_a_corrupt_trees_file(tmp_path, capsys):
    (tmp_path / "trees.parquet").write_bytes(b"PAR1 not really")
    line = one_line(capsys, ["view", str(tmp_path / "trees.parquet")])
    assert line.startswith(f"pbt view: {tmp_path / 'trees.parquet'}: not a readable trees Parquet file")


def test_view_of_a_run_with_a_corrupt_part_file(run, capsys):
    bad = run.run_dir / "trees" / "part-b.parquet"
    bad.write_bytes(b"garbage")
    line = one_line(capsys, ["view", str(run.run_dir), "--list"])
    assert str(bad) in line and "not a readable trees Parquet file" in line


def test_view_of_a_file_of_another_schema(run, capsys):
    pairs = run.run_dir / "preferences" / "pairs" / "train.parquet"
    line = one_line(capsys, ["view", str(pairs)])
    assert "not a tree row" in line and "pbt grow" in line


def test_view_of_a_reference_file_with_bad_lines(tmp_path, capsys):
    from pbt_ray.dialogue.reference import tree_to_reference

    path = tmp_path / "ref.jsonl"
    good = json.dumps(tree_to_reference(fixture_tree("F1")))
    path.write_text(good + "\n{not json\n" + json.dumps({"data": []}) + "\n")
    assert main(["view", str(path), "--list"]) == 0  # the good tree is shown, each bad line named once
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        f"pbt view: {path} line 2: not JSON (Expecting property name enclosed in double quotes)",
        f"pbt view: {path} line 3: record.data: missing or not a non-empty list of turns"]
    assert "q-F1\tcomplete" in captured.out


def test_view_of_a_missing_path_or_tree(run, tmp_path, capsys):
    assert "does not exist" in one_line(capsys, ["view", str(tmp_path / "nope")], code=2)
    line = one_line(capsys, ["view", str(run.run_dir), "--tree", "no-such-tree"])
    assert "no tree 'no-such-tree'" in line and "--list" in line


def test_mine_of_unreadable_trees_keeps_the_pairs(run, tmp_path, capsys):
    """A corrupt (or not-a-trees) file used to be mined as zero trees, and empty pair files replaced good ones."""
    before = snapshot(run.run_dir / "preferences")
    corrupt = tmp_path / "other" / "trees.parquet"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"PAR1 broken")
    out = str(run.run_dir / "preferences")
    line = one_line(capsys, ["mine", *base(run), "--no-ray", "--trees", str(corrupt), "--out", out])
    assert "none of the 1 tree(s)" in line and "not a readable Parquet file" in line and "left as it was" in line
    questions = tmp_path / "q.parquet"
    pq.write_table(pa.table({"id": ["q1"], "question": ["Q?"]}), questions)
    line = one_line(capsys, ["mine", *base(run), "--no-ray", "--trees", str(questions), "--out", out])
    assert "none of the 1 tree(s)" in line and "not a tree row" in line
    assert snapshot(run.run_dir / "preferences") == before


def test_mine_of_an_unknown_suffix_or_a_broken_tree_with_fail(run, tmp_path, capsys):
    (tmp_path / "trees.txt").write_text("x")
    line = one_line(capsys, ["mine", *base(run), "--no-ray", "--trees", str(tmp_path / "trees.txt")])
    assert "cannot tell the tree format" in line and "--input-format" in line
    broken = fixture_tree("F2")
    broken.tree_id, broken.nodes[3].parent = "orphan", 99
    mixed = tmp_path / "mixed" / "trees.parquet"
    mixed.parent.mkdir()
    write_ours(mixed, [fixture_tree("F1"), broken])
    before = snapshot(run.run_dir / "preferences")
    line = one_line(capsys, ["mine", *base(run), "mine.on_broken_tree=fail", "--no-ray", "--trees", str(mixed),
                             "--out", str(run.run_dir / "preferences")])
    assert "1 broken tree(s), first:" in line and "orphan" in line and "unknown parent 99" in line
    assert snapshot(run.run_dir / "preferences") == before


# ---- pair files ------------------------------------------------------------------------------------------------

def test_train_on_a_pairs_file_missing_a_column(run, tmp_path, capsys):
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    pq.read_table(run.run_dir / "preferences" / "pairs" / "train.parquet").drop_columns(["chosen"]).to_pandas() \
        .to_parquet(pairs / "train.parquet")
    line = one_line(capsys, ["train", *base(run), "--pairs", str(tmp_path)])
    assert f"{pairs / 'train.parquet'}: no 'chosen' column" in line and "pbt mine" in line


def test_train_on_a_corrupt_pairs_file(run, tmp_path, capsys):
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "train.parquet").write_bytes(b"PAR1 cut short")
    line = one_line(capsys, ["train", *base(run), "--pairs", str(tmp_path)])
    assert "train.parquet: not a readable Parquet file" in line


def test_held_out_pairs_that_cannot_be_read(run, tmp_path):
    """`pbt eval balanced --pairs` and the experiment read pairs with read_pairs: a corrupt or foreign file is a
    PairsFileError naming it (one line in `pbt`), not an Arrow traceback."""
    from pbt_ray.cli import _one_line
    from pbt_ray.evaluation.stage import balanced_items
    from pbt_ray.preferences.pairs import PairsFileError

    (tmp_path / "test.parquet").write_bytes(b"nope")
    with pytest.raises(PairsFileError, match=r"test.parquet: not a readable Parquet file") as err:
        balanced_items(run, str(tmp_path / "test.parquet"))
    assert "\n" not in _one_line(err.value)
    pq.write_table(pa.table({"prompt": ["q"]}), tmp_path / "foreign.parquet")
    with pytest.raises(PairsFileError, match=r"foreign.parquet: not pairs written by `pbt mine` \(no column type, "):
        balanced_items(run, str(tmp_path / "foreign.parquet"))
    good = pq.read_table(run.run_dir / "preferences" / "pairs" / "test.parquet")
    broken = good.set_column(good.schema.get_field_index("gold"), "gold", pa.array([7] * good.num_rows))
    pq.write_table(broken, tmp_path / "odd.parquet")
    with pytest.raises(PairsFileError, match=r"odd.parquet row 0: not a pair written by `pbt mine` \(TypeError"):
        balanced_items(run, str(tmp_path / "odd.parquet"))


# ---- configs and flags -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, expected", [
    (["serve.prot=1"], "serve.prot: unknown field; did you mean 'port'? [from override 'serve.prot=1']"),
    (["train.epochs=-2"], "train.epochs: Input should be greater than 0 (got -2) [from override 'train.epochs=-2']"),
    (["serve.port=x", "grow.temperature=-1"], "serve.port: Input should be a valid integer"),
    (["serve.port"], "Override 'serve.port' is not of the form section.field=value"),
    (["serve.port.x=1"], "Override 'serve.port.x=1': serve.port is a value, not a section"),
    (["serve.models.3.id=x"], "serve.models.3 must be a list index below 1"),
    (["experiment.seeds=[]"], "experiment.seeds is empty"),
    (["experiment.conditions=[bogus]"], "experiment.conditions.0: Input should be 'base'"),
])
def test_bad_overrides(argv, expected, capsys):
    line = one_line(capsys, ["config", "-c", "local", *argv], code=2)
    assert line.startswith("pbt: config error: Invalid configuration (preset 'local'): ") or "Override" in line
    assert expected in line


@pytest.mark.parametrize("text, expected", [
    ("serve: [1, 2\n", "not valid YAML at line 2, column 1: expected ',' or ']'"),
    ("serve:\n  port: 1\n   x: 2\n", "not valid YAML at line 3, column 5: mapping values are not allowed here"),
    ("extends: local\nserve:\n  port: -5\n", "serve.port: Input should be greater than or equal to 1"),
    ("extends: local\ntrain:\n  epocs: 2\n", "train.epocs: unknown field; did you mean 'epochs'?"),
    ("extends: cycle.yaml\n", "'extends' forms a cycle"),
    ("- a\n- list\n", "the top level must be a mapping of sections"),
])
def test_bad_config_files(text, expected, tmp_path, capsys):
    path = tmp_path / "cycle.yaml"
    path.write_text(text)
    line = one_line(capsys, ["config", "-c", str(path)], code=2)
    assert str(path) in line and expected in line


def test_missing_config_file(tmp_path, capsys):
    line = one_line(capsys, ["config", "-c", str(tmp_path / "nope.yaml")], code=2)
    assert f"Config file {tmp_path / 'nope.yaml'} does not exist" in line and "Presets:" in line


@pytest.mark.parametrize("argv, expected", [
    (["eval", "balanced", "--limit", "abc", "--url", "http://127.0.0.1:9"],
     "eval.limit: Input should be a valid integer, unable to parse string as an integer (got 'abc') "
     "[from override 'eval.limit=abc']"),
    (["mine", "--balance", "bogus"], "pbt mine: error: argument --balance: invalid choice: 'bogus'"),
    (["frobnicate"], "pbt: error: argument COMMAND: invalid choice: 'frobnicate'"),
    (["plan-train", "--zero", "1"], "pbt plan-train: error: argument --zero: invalid choice: 1"),
    (["run", "--round", "two"], "pbt run: error: argument --round: invalid int value: 'two'"),
    (["run", "-c", "local", "--dry-run", "--bogus"], "unrecognized arguments: --bogus"),
    (["bench", "serve", "--concurrency", "1,x"], "pbt bench serve: --concurrency must be comma-separated integers"),
    (["bench", "extract", "--modes", "telepathy"], "pbt bench extract: --modes takes"),
    (["plan-train", "--model", "gpt-9"], "pbt plan-train: unknown model 'gpt-9'"),
])
def test_bad_flags(argv, expected, capsys):
    assert expected in one_line(capsys, argv, code=2)


def test_an_override_after_a_flag_is_an_override(tmp_path, capsys):
    """`pbt run -c local --dry-run train.epochs=3` said 'unrecognized arguments: train.epochs=3'."""
    assert main(["run", "-c", "local", "--dry-run", f"runs_dir={tmp_path}", "train.epochs=3"]) == 0
    assert "what `pbt run` would do" in capsys.readouterr().out
    line = one_line(capsys, ["run", "-c", "local", "--dry-run", f"runs_dir={tmp_path}", "train.epochs=0"], code=2)
    assert "train.epochs: Input should be greater than 0" in line


def test_run_flags_are_checked_before_anything_is_written(run, capsys):
    before = snapshot(run.run_dir)
    assert "--from nope: not a stage of this round" in one_line(capsys, ["run", *base(run), "--from", "nope"])
    assert "--round 3: this config runs rounds 1..1" in one_line(capsys, ["run", *base(run), "--round", "3"])
    assert snapshot(run.run_dir) == before


def test_an_experiment_of_several_rounds(run, capsys):
    line = one_line(capsys, ["experiment", *base(run), "rounds=2", "--dry-run"])
    assert line == "pbt: error: an experiment compares conditions within one round; set rounds=1"


# ---- run directories -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("state, expected", [
    ("{\"version\": 2, \"stag", "loop_state.json is not readable JSON"),
    ("[]", "loop_state.json is not a loop state"),
    (json.dumps({"version": 2, "stages": {"grow": "done"}}), "loop_state.json is not a loop state"),
    (json.dumps({"version": 7, "stages": {}}), "loop state version 7; this pbt-ray reads 2"),
])
@pytest.mark.parametrize("dry_run", [True, False])
def test_a_broken_loop_state(state, expected, dry_run, run, capsys):
    (run.run_dir / "loop_state.json").write_text(state)
    before = snapshot(run.run_dir)
    line = one_line(capsys, ["run", *base(run), *(["--dry-run"] if dry_run else [])])
    assert str(run.run_dir / "loop_state.json") in line and expected in line
    assert snapshot(run.run_dir) == before  # the state, the trees, the pairs and run.yaml as they were


def test_a_corrupt_part_file_when_grow_resumes(run, capsys):
    """The resume read every part file's tree ids with Arrow: a truncated one was a traceback."""
    bad = run.run_dir / "trees" / "part-b.parquet"
    bad.write_bytes(b"PAR1 half a file")
    before = snapshot(run.run_dir)
    line = one_line(capsys, ["grow", *base(run)])
    assert line.startswith(f"pbt: error: {bad}: not a readable trees Parquet file") and "move it out of" in line
    assert snapshot(run.run_dir) == before


def test_grow_itself_stops_at_a_corrupt_part_file(run):
    """Where `pbt run` grows (no up-front check): the same GrowError, before any question is grown."""
    from pbt_ray.dialogue.pipeline import GrowError, grow_trees

    (run.run_dir / "trees" / "part-b.parquet").write_bytes(b"")
    before = snapshot(run.run_dir)
    with pytest.raises(GrowError, match="part-b.parquet: not a readable trees Parquet file"):
        grow_trees(run, "http://127.0.0.1:9/v1", log=lambda *_: None, progress=False)
    assert kept(before, run.run_dir)


@pytest.mark.parametrize("text", ["{\"cell\": \"base\", \"fingerp", "[1, 2]"])
def test_a_corrupt_cell_record(text, run, capsys):
    from pbt_ray import experiment as X

    path = X.cell_config(run, X.Cell("base", None)).run_dir / X.CELL_FILE
    path.parent.mkdir(parents=True)
    path.write_text(text)
    before = snapshot(run.run_dir)
    line = one_line(capsys, ["experiment", *base(run), "--dry-run"])
    assert f"{path}: not a cell record" in line and "runs that cell again" in line
    line = one_line(capsys, ["experiment", *base(run), "--report-only"])
    assert f"{path}: not" in line and "runs that cell again" in line
    assert snapshot(run.run_dir) == before


def test_a_corrupt_evaluation_result(tmp_path, capsys):
    from .test_report import fake_run

    run = fake_run(tmp_path / "run")
    assert main(["report", str(run)]) == 0
    capsys.readouterr()
    before = snapshot(run)
    results = run / "eval" / "trained" / "balanced" / "results.jsonl"
    results.write_text(results.read_text() + "{\"question_id\": \"q1\", \"truncat\n")
    line = one_line(capsys, ["report", str(run)])
    assert re.search(rf"{re.escape(str(results))} line \d+: not JSON", line) and "pbt eval" in line
    metrics = run / "eval" / "base" / "team" / "metrics.json"
    metrics.write_text("{\"suite\": ")
    line = one_line(capsys, ["report", str(run)])
    assert f"{metrics}: not readable JSON" in line
    assert {k: v for k, v in snapshot(run).items() if k.startswith("report/")} == \
        {k: v for k, v in before.items() if k.startswith("report/")}  # the last good report stays


def test_a_run_in_use_by_another_command(run, capsys):
    from pbt_ray.record import run_lock

    with run_lock(run.run_dir, "run"):
        line = one_line(capsys, ["mine", *base(run), "--no-ray"])
    assert f"{run.run_dir} is in use by pid" in line and "(`pbt run`)" in line


# ---- errors raised inside Ray ----------------------------------------------------------------------------------

def _task_error(cause: Exception):
    """What the driver gets when a Ray task raises ``cause``: RayTaskError(<cause's class>), an instance of both."""
    from ray.exceptions import RayTaskError

    trace = ("Traceback (most recent call last):\n  File \"grower.py\", line 1, in grow\n"
             f"{type(cause).__name__}: {cause}")
    return RayTaskError("TreeGrower.__call__", trace, cause).as_instanceof_cause()


def test_a_ray_task_error_is_one_line_with_the_stage_cause_and_logs(run, monkeypatch, capsys):
    """A MineError raised in a mining task is also a MineError on the driver, and printing it printed the remote
    traceback; any Ray error now says which stage failed, the root cause's message and where the logs are."""
    import pbt_ray.cli as cli
    from pbt_ray.preferences.mining import MineError

    def failing_grow(_cfg):
        raise _task_error(MineError("tree r3: no gold answers"))

    monkeypatch.setattr(cli, "_grow", failing_grow)
    line = one_line(capsys, ["grow", *base(run)])
    assert line.startswith("pbt: error: grow failed in a Ray task: MineError: tree r3: no gold answers. Ray's logs: ")


def test_the_stage_of_a_ray_error_inside_pbt_run(monkeypatch, capsys):
    """In `pbt run` the loop tags the error with the stage it left (pbt_ray.loop.stage_scope)."""
    import pbt_ray.cli as cli
    from pbt_ray.loop import stage_scope

    def failing(_args):
        with stage_scope("train"):
            raise _task_error(ValueError("CUDA error: out of memory"))

    monkeypatch.setattr(cli, "_dispatch", failing)
    line = one_line(capsys, ["run"])
    assert line.startswith("pbt: error: train failed in a Ray task: ValueError: CUDA error: out of memory. Ray's logs:")


def test_root_causes_under_rays_wrappers():
    from ray.exceptions import RayTaskError
    from ray.train import ControllerError, WorkerGroupError

    from pbt_ray.cli import _ray_failure

    workers = WorkerGroupError("rank 0 failed", {1: KeyError("prompt"), 0: _task_error(OSError("disk full"))})
    assert "mine failed in a Ray task: OSError: disk full." in _ray_failure(workers, "mine")
    controller = ControllerError(ZeroDivisionError("division by zero"))
    assert "ZeroDivisionError: division by zero" in _ray_failure(controller, "x")
    trace = "Traceback (most recent call last):\n  File \"x.py\", line 2\nRuntimeError: engine died"
    bare = RayTaskError("f", trace, None)
    line = _ray_failure(bare, "eval")
    assert "eval failed in a Ray task: RuntimeError: engine died." in line and "\n" not in line
    for failure in (workers, bare):
        assert len(_ray_failure(failure, "s").splitlines()) == 1
