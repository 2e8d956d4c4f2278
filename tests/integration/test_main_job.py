"""The README's main job, as a user runs it: `pbt run` prints a debate held through the real Serve app."""

import json
import os
import subprocess
import sys

import pytest

from .conftest import free_port

pytestmark = pytest.mark.integration


def test_pbt_run_prints_a_debate_turn_by_turn(tmp_path):
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-m", "pbt_ray", "run", "-c", "local", f"serve.port={free_port()}", f"runs_dir={tmp_path}"],
        capture_output=True, text=True, timeout=900, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "Question: What is the capital of France?" in out
    positions = [out.index(f"[turn {i}] {role} (smollm2-135m-instruct):") for i, role in
                 [(1, "persuadee"), (2, "persuader"), (3, "persuadee"), (4, "persuader")]]
    assert positions == sorted(positions)
    transcript = json.loads((tmp_path / "local" / "debate.json").read_text())
    assert transcript["question"] == "What is the capital of France?" and transcript["gold"] == ["Paris"]
    turns = transcript["turns"]
    assert [t["speaker"] for t in turns] == ["persuadee", "persuader", "persuadee", "persuader"]
    assert all(t["text"].strip() for t in turns)
