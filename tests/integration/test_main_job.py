"""The README's main job, as a user runs it: `pbt run` prints a debate held through the real Serve app, grows,
mines, trains (or says why not), evaluates and reports; a rerun skips what is done; a second round feeds round 1's
trained model back in."""

import json
import os
import re
import subprocess
import sys

import pytest

from pbt_ray import loop
from pbt_ray.dialogue.pipeline import read_trees

from .conftest import free_port

pytestmark = pytest.mark.integration
# Training runs or is skipped with its reason (tests/integration/test_train.py and test_trained_serve.py cover
# training and the trained endpoint), which keeps this test to a few minutes.
# Both rounds grow three short commonsense trees (depth 2: an answer, a persuasion, two replies) mined without
# balancing. The settings are the run's: changing them for round 2 would make round 1's stages stale (issue 14).
SMALL = ["grow.questions=bundled:commonsense", "grow.limit=3", "grow.depth=2", "mine.balance=none", "eval.limit=1",
         "eval.suites=[are-you-sure,team]", "debate.turns=2"]
ROUND_2 = ["rounds=2"]


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
    # Every turn shows what the answer instrument read in it; a turn that names Paris is read as Paris
    # (the few-shot extractor before issue 12 printed "no answer" for all of them).
    assert all(n["read_by"] for n in nodes) and out.count("(read by ") >= len(nodes)
    assert all(n["answer"] == "paris" for n in nodes if "paris" in n["text"].lower())
    # Then the trees, with a progress bar and a summary.
    assert "growing trees" in proc.stderr
    assert "[pbt] trees: 3 grown, 0 already done, 0 failed" in out
    assert "[pbt] answers read (extract.mode rules): NONE in " in out
    assert len(list(read_trees(tmp_path / "local"))) == 3
    # Then the pairs, with the stats report.
    assert "pairs by type:" in out and "[pbt] pairs in" in out
    run = tmp_path / "local"
    assert (run / "preferences" / "mine_stats.json").is_file()
    # Training ran or said why not (two trees of the 135M model rarely give a trainable pair); then the
    # evaluations of the base model and the report.
    state = json.loads((run / "loop_state.json").read_text())["stages"]
    assert list(state) == ["debate", "grow", "mine", "train", "eval", "report"]
    assert all(s["complete"] and s["fingerprint"] for s in state.values())
    assert state["train"]["info"].get("adapter") or "train skipped:" in out
    record = [json.loads(line) for line in (run / "runs.jsonl").read_text().splitlines()]
    assert record[-1]["command"] == "run" and record[-1]["packages"]["vllm"] and (run / "run.yaml").is_file()
    for suite in ("are-you-sure", "team"):
        assert json.loads((run / "eval" / "base" / suite / "metrics.json").read_text())["items"] >= 1
    assert "data:image/png;base64," in (run / "report" / "report.html").read_text()
    # Every headline number of the report comes with its n and, where there are items, a 95% interval.
    report = json.loads((run / "report" / "report.json").read_text())
    for suite in ("are-you-sure", "team"):
        for name, estimate in report["base"][suite]["estimates"].items():
            assert estimate["n"] >= 0 and "ci95" in estimate, (suite, name)
            if estimate["n"] and estimate["value"] is not None:  # an interval, or the stated reason there is none
                assert estimate["ci95"] is not None or estimate["method"].startswith("no interval"), (suite, name, estimate)
    assert re.search(r"\[-?[01]\.\d{3}, -?[01]\.\d{3}\][^<]*n=\d+", (run / "report" / "report.html").read_text())

    # A rerun skips every finished stage (no cluster, no app).
    again = subprocess.run([sys.executable, "-m", "pbt_ray", "run", "-c", "local", f"runs_dir={tmp_path}", *SMALL],
                           capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and "every stage of" in again.stdout and "starting an in-process" not in again.stdout

    # Then a second round: round 1's trained model (planted here, since two trees rarely give a pair) is fed
    # back in as round 2's persuadee. Round 1 stays as it is (its own evaluations ran above).
    plant_adapter(run)
    second = subprocess.run([sys.executable, "-m", "pbt_ray", "run", "-c", "local", f"runs_dir={tmp_path}", *SMALL,
                             *ROUND_2, f"serve.port={free_port()}"],
                            capture_output=True, text=True, timeout=900, env=env)
    out = second.stdout
    assert second.returncode == 0, out[-3000:] + second.stderr[-3000:]
    assert "round 1 of 2" not in out and "round 2 of 2" in out  # round 1 is done: skipped without a word
    assert (run / "merged" / "config.json").is_file()  # round 1's adapter, merged once to be served
    round_two = run / "round-2"
    trees = list(read_trees(round_two))
    assert len(trees) == 3
    for tree in trees:
        assert tree.models[tree.roles["persuadee"]] == "pbt-trained"  # round 1's model answered as the persuadee
        assert tree.models[tree.roles["persuader"]] == "smollm2-135m-instruct"
        assert tree.models["extractor"] == "deterministic reader"  # the local preset reads answers by rule
    state = json.loads((round_two / "loop_state.json").read_text())["stages"]
    assert list(state) == list(loop.ROUND_STAGES)
    assert (round_two / "preferences" / "mine_stats.json").is_file()
    trained = bool(state["train"]["info"].get("adapter"))
    if trained:  # its trees gave pairs: DPO from round 1's model, then evaluated next to base
        assert (round_two / "adapter" / "pbt_base_model.txt").read_text().strip() == str(run / "merged")
        metrics = json.loads((run / "eval" / "trained-round-2" / "team" / "metrics.json").read_text())
        assert metrics["served"]["model"] == "pbt-trained"
        assert metrics["served"]["extractor"] == "smollm2-135m-instruct"  # the one extractor of every round
    else:
        assert "train skipped:" in out
    report = json.loads((run / "report" / "report.json").read_text())
    round_one_trained = (run / "eval" / "trained").is_dir()  # two trees seldom train round 1 for real
    assert list(report) == ["base"] + (["trained"] if round_one_trained else []) + (["trained-round-2"] if trained else [])


def plant_adapter(run):
    """What a round 1 that trained leaves: an adapter (small random LoRA weights, so the merged model differs
    from its base but still answers) recording its base model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pbt_ray.training.data import resolve_model_path

    base = resolve_model_path("embedded")
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=8, lora_alpha=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(run / "adapter")
    (run / "adapter" / "pbt_base_model.txt").write_text(base + "\n")
