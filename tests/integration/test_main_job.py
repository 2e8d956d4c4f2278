"""The main job, as a user runs it: `pbt run -c smoke` (questions chosen because their trees give train pairs)
holds a debate through the real Serve app, grows, mines, trains a LoRA adapter under Ray Train, serves the merged
model next to the base, evaluates both and reports; a rerun skips everything. (The same loop through
`ray job submit`, its driver killed during the merge and during the evaluation: tests/integration/test_job_submit.py.)

Then a second round (issue 14) on a smaller run of its own: round 1's trained model is fed back in as the
persuadee."""

import json
import os
import re
import subprocess
import sys

import pytest

from pbt_ray import loop
from pbt_ray.config import load_config
from pbt_ray.dialogue.pipeline import read_trees
from pbt_ray.serving.trained import MERGED_MARKER

from .conftest import free_port

pytestmark = pytest.mark.integration

ENV = dict(os.environ)
SUITES = ("are-you-sure", "team")  # the smoke preset's eval.suites
NO_PAIR = ("the smoke preset's questions gave no train pair this time: sampling is not seeded on vLLM-CPU "
           "(grow.seed_requests); at the rates measured (pbt_ray/presets/smoke.yaml) that is well under 1 run in 100")


def pbt_run(run_dir, *extra):
    return [sys.executable, "-m", "pbt_ray", "run", "-c", "smoke", f"runs_dir={run_dir}", *extra]


def stages(run_dir) -> dict:
    return json.loads((run_dir / "loop_state.json").read_text())["stages"]


def check_trained_run(run, suites=SUITES) -> None:
    """What a finished `pbt run -c smoke` leaves (here and through `ray job submit`): every stage complete; the
    adapter; the merged model, changed by training, served as pbt-trained in the running app; base and trained
    evaluated on the same items, each once, none failed; a report with both."""
    state = stages(run)
    assert list(state) == ["debate", "grow", "mine", "train", "eval", "report"]
    assert all(s["complete"] and s["fingerprint"] for s in state.values()), state
    assert state["train"]["info"]["adapter"] and state["train"]["info"]["global_step"] >= 1
    assert (run / "adapter" / "adapter_model.safetensors").is_file() and (run / "merged" / MERGED_MARKER).is_file()
    assert not (run / ".merged.tmp").exists()
    assert merged_differs_from_base(run / "merged")  # what was served as pbt-trained carries the DPO update
    for suite in suites:
        items = {}
        for label in ("base", "trained"):
            metrics = json.loads((run / "eval" / label / suite / "metrics.json").read_text())
            results = [json.loads(line) for line in (run / "eval" / label / suite / "results.jsonl").open()]
            keys = [(r["question_id"], r.get("order")) for r in results]  # team: each question in both orders
            assert metrics["items"] == len(results) == (4 if suite == "team" else 2), (label, suite, metrics)
            assert metrics["failed"] == 0 and len(set(keys)) == len(keys), (label, suite, keys)  # none twice
            assert metrics["served"]["model"] == ("pbt-trained" if label == "trained" else "smollm2-135m-instruct")
            items[label] = sorted(keys)
        assert items["base"] == items["trained"]  # the same held-out items
    report = json.loads((run / "report" / "report.json").read_text())
    assert list(report) == ["base", "trained"]
    for label in report:  # every headline number with its n and an interval, or the reason there is none
        for suite in suites:
            for name, estimate in report[label][suite]["estimates"].items():
                assert estimate["n"] >= 0 and "ci95" in estimate, (label, suite, name)
                if estimate["n"] and estimate["value"] is not None:
                    assert estimate["ci95"] is not None or estimate["method"].startswith("no interval"), estimate
    html = (run / "report" / "report.html").read_text()
    assert "data:image/png;base64," in html and re.search(r"\[-?[01]\.\d{3}, -?[01]\.\d{3}\][^<]*n=\d+", html)


def test_pbt_run_trains_serves_and_evaluates_the_trained_model(tmp_path):
    run = tmp_path / "smoke"
    proc = subprocess.run(pbt_run(tmp_path, f"serve.port={free_port()}", "train.loggers=[mlflow]"),
                          capture_output=True, text=True, timeout=1200, env=ENV)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    # The demo debate, printed turn by turn, each turn with what the answer instrument read in it.
    assert "Question: What is the capital of France?" in out
    assert out.index("[0] A (independent, standard)") < out.index("[1] B (independent, standard)")
    debate = json.loads((run / "debate.json").read_text())
    assert debate["gold"] == ["Paris"] and len(debate["nodes"]) >= 2
    assert all(n["read_by"] for n in debate["nodes"]) and out.count("(read by ") >= len(debate["nodes"])
    assert all(n["answer"] == "paris" for n in debate["nodes"] if "paris" in n["text"].lower())
    # The trees (with a progress bar), the pairs, and training for real: the questions are chosen to give pairs.
    chosen = load_config("smoke").grow.question_ids
    assert "growing trees" in proc.stderr
    assert f"[pbt] trees: {len(chosen)} grown, 0 already done, 0 failed" in out
    assert "[pbt] answers read (extract.mode rules): NONE in " in out
    assert sorted(t.question_id for t in read_trees(run)) == sorted(chosen)
    mined = json.loads((run / "preferences" / "mine_stats.json").read_text())
    assert sum(mined["selected"].get("train", {}).values()) >= 1, NO_PAIR
    assert "train skipped" not in out and "[pbt] adapter in " in out
    assert "[pbt] eval balanced (base) skipped:" not in out  # smoke evaluates are-you-sure and team only
    # The run's trees and pairs load with Hugging Face datasets as they are (issue 17).
    from datasets import load_dataset

    trees = load_dataset("parquet", data_files=str(run / "trees" / "*.parquet"), split="train")
    assert sorted(trees["question_id"]) == sorted(chosen) and trees[0]["nodes"][0]["text"]
    pairs = load_dataset("parquet", data_files=str(run / "preferences" / "pairs" / "train.parquet"), split="train")
    assert len(pairs) == sum(mined["selected"]["train"].values()) and {"chosen", "rejected"} <= set(pairs.column_names)
    check_trained_run(run)
    # MLflow (train.loggers, issue 17): one run named after the pbt run holds its grow, mine and eval metrics and the
    # report; the DPO run is its child, with the loss series. Read back through MLflow's client.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("pbt-ray").experiment_id])
    parent = next(r for r in runs if r.info.run_name == "smoke")
    logged = parent.data.metrics
    assert logged["round-1/grow/grown"] == len(chosen) and logged["round-1/grow/failed"] == 0
    assert any(k.startswith("round-1/mine/") for k in logged) and "round-1/train/global_step" in logged
    assert {k.split("/")[1] for k in logged if k.startswith("eval/")} == {"base", "trained"}
    assert "report/report.html" in [a.path for a in client.list_artifacts(parent.info.run_id, "report")]
    child = next(r for r in runs if r.info.run_name.startswith("smoke/dpo/"))
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and "dpo/loss" in child.data.metrics
    record = [json.loads(line) for line in (run / "runs.jsonl").read_text().splitlines()]
    assert record[-1]["command"] == "run" and record[-1]["packages"]["vllm"] and (run / "run.yaml").is_file()

    # A rerun skips every finished stage (no cluster, no app).
    again = subprocess.run(pbt_run(tmp_path), capture_output=True, text=True, timeout=300, env=ENV)
    assert again.returncode == 0 and "every stage of" in again.stdout and "starting an in-process" not in again.stdout


# A second round on the local preset cut down (three short trees, depth 2: no persuader turn, so no training):
# round 1's trained model is planted, then fed back in as round 2's persuadee.
SMALL = ["grow.questions=bundled:commonsense", "grow.limit=3", "grow.depth=2", "mine.balance=none", "eval.limit=1",
         "eval.suites=[team]", "debate.turns=2"]


def test_a_second_round_serves_round_1s_trained_model_as_the_persuadee(tmp_path):
    first = subprocess.run([sys.executable, "-m", "pbt_ray", "run", "-c", "local", f"serve.port={free_port()}",
                            f"runs_dir={tmp_path}", *SMALL], capture_output=True, text=True, timeout=900, env=ENV)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    run = tmp_path / "local"
    assert "train skipped:" in first.stdout
    plant_adapter(run)
    second = subprocess.run([sys.executable, "-m", "pbt_ray", "run", "-c", "local", f"runs_dir={tmp_path}", *SMALL,
                             "rounds=2", f"serve.port={free_port()}"],
                            capture_output=True, text=True, timeout=900, env=ENV)
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
    state = stages(round_two)
    assert list(state) == list(loop.ROUND_STAGES)
    assert all(s["complete"] for s in state.values())
    assert (round_two / "preferences" / "mine_stats.json").is_file() and "train skipped:" in out


def merged_differs_from_base(merged) -> bool:
    """The merged model's attention weights are not its base's (LoRA on q/k/v: even one DPO step moves them)."""
    from safetensors import safe_open

    from pbt_ray.training.data import resolve_model_path

    name = "model.layers.0.self_attn.q_proj.weight"
    with safe_open(str(merged / "model.safetensors"), "pt") as m, \
            safe_open(str(resolve_model_path("embedded")) + "/model.safetensors", "pt") as b:
        return not m.get_tensor(name).equal(b.get_tensor(name))


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
