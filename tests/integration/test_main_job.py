"""The README's main job, as a user runs it: `pbt run` prints a debate held through the real Serve app."""

import json
import os
import subprocess
import sys

import pytest

from pbt_ray.dialogue.pipeline import read_trees

from .conftest import free_port

pytestmark = pytest.mark.integration
# Two trivia trees and balanced mining: training is skipped with its reason (tests/integration/test_train.py and
# test_trained_serve.py cover training and the trained endpoint), which keeps this test to a few minutes.
SMALL = ["grow.limit=2", "grow.questions=bundled:trivia", "mine.balance=balanced", "eval.limit=1",
         "eval.suites=[are-you-sure,team]", "debate.turns=2"]


def test_pbt_run_prints_a_debate_turn_by_turn(tmp_path):
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-m", "pbt_ray", "run", "-c", "local", f"serve.port={free_port()}", f"runs_dir={tmp_path}",
         *SMALL],
        capture_output=True, text=True, timeout=900, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    # The demo debate: an evaluation-mode tree, printed turn by turn (it may stop early on agreement).
    assert "Question: What is the capital of France?" in out
    assert out.index("[0] A (independent, standard)") < out.index("[1] B (independent, standard)")
    debate = json.loads((tmp_path / "local" / "debate.json").read_text())
    nodes = debate["nodes"]
    assert debate["question"] == "What is the capital of France?" and debate["gold"] == ["Paris"]
    assert [n["speaker"] for n in nodes] == ["A", "B", "A", "B"][: len(nodes)] and len(nodes) >= 2
    assert all(n["family"] == "sp" and n["text"].strip() for n in nodes)
    assert all(n["parent"] == n["id"] - 1 for n in nodes)  # one branch
    # Then the trees, with a progress bar and a summary.
    assert "growing trees" in proc.stderr
    assert "[pbt] trees: 2 grown, 0 already done, 0 failed" in out
    assert len(list(read_trees(tmp_path / "local"))) == 2
    # Then the pairs, with the stats report.
    assert "pairs by type:" in out and "[pbt] pairs in" in out
    run = tmp_path / "local"
    assert (run / "preferences" / "mine_stats.json").is_file()
    # Training ran or said why not (two trees of the 135M model rarely give a trainable pair); then the
    # evaluations of the base model and the report.
    state = json.loads((run / "loop_state.json").read_text())
    assert list(state["done"]) == ["debate", "grow", "mine", "train", "eval", "report"]
    assert "adapter" in state["done"]["train"] or "train skipped:" in out
    for suite in ("are-you-sure", "team"):
        assert json.loads((run / "eval" / "base" / suite / "metrics.json").read_text())["items"] >= 1
    assert "data:image/png;base64," in (run / "report" / "report.html").read_text()

    # A rerun skips every finished stage (no cluster, no app); --from redoes the report only.
    again = subprocess.run([sys.executable, "-m", "pbt_ray", "run", "-c", "local", f"runs_dir={tmp_path}", *SMALL],
                           capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and "every stage of" in again.stdout and "starting an in-process" not in again.stdout
    redo = subprocess.run([sys.executable, "-m", "pbt_ray", "run", "-c", "local", f"runs_dir={tmp_path}", *SMALL,
                           "--from", "report"], capture_output=True, text=True, timeout=300, env=env)
    assert redo.returncode == 0 and "already done, skipped: debate, grow, mine, train, eval" in redo.stdout
    assert "[pbt] report:" in redo.stdout and "debater app ready" not in redo.stdout
