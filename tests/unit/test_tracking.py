"""MLflow and W&B tracking of a pbt run (issue 17), against a real local MLflow store (sqlite, read back with
MLflow's client) and W&B in offline mode (its run files read back)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from pbt_ray import tracking
from pbt_ray.config import load_config
from pbt_ray.training.launch import _show_progress, tracker_run_name
from tests.unit.test_tensorboard import ListQueue

ITEMS = [{"stage": "dpo", "step": 1, "max_steps": 2, "loss": 0.69, "rewards/margins": 0.0},
         {"stage": "dpo", "step": 2, "max_steps": 2, "loss": 0.61, "rewards/margins": 0.12, "eval_loss": 0.65}]


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR",
                 "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")


def plant_round(run_dir: Path) -> None:
    """What grow, mine, train, eval and report leave on disk (the shapes the stages write)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "grow_summary.json").write_text(json.dumps(
        {"grown": 19, "failed": 0, "none_rate": 0.25, "none_rate_ci95": [0.2, 0.31], "failures": ["x"]}))
    (run_dir / "preferences").mkdir()
    (run_dir / "preferences" / "mine_stats.json").write_text(json.dumps({"pairs": {"resist": 3, "accept": 2}}))
    (run_dir / "train_metrics.json").write_text(json.dumps({"global_step": 2, "loss": 0.61, "run_name": "r"}))
    suite = run_dir / "eval" / "trained" / "are-you-sure"
    suite.mkdir(parents=True)
    (suite / "metrics.json").write_text(json.dumps({"n": 2, "accuracy_after": {"value": 0.5, "ci95": [0.1, 0.9]},
                                                    "complete": True}))
    later = run_dir / "eval" / "trained-round-2" / "are-you-sure"
    later.mkdir(parents=True)
    (later / "metrics.json").write_text(json.dumps({"n": 2}))
    (run_dir / "report").mkdir()
    (run_dir / "report" / "report.html").write_text("<html></html>")


def run_training(cfg, trackers) -> None:
    done = threading.Thread(target=lambda: None)
    done.start()
    done.join()
    child = trackers.child(tracker_run_name(cfg, "dpo", "dpo-abc"), cfg)
    _show_progress(done, ListQueue(ITEMS), lambda *_: None, progress=False, trackers=child)
    child.close(ok=True)


def log_a_round(cfg, logs) -> None:
    with tracking.session(cfg, logs.append) as trackers:
        assert tracking.active() is trackers
        for stage in ("grow", "mine"):
            tracking.stage_done(stage, cfg.run_dir, cfg.run_dir, 1)
        run_training(cfg, trackers)
        for stage in ("train", "eval", "report"):
            tracking.stage_done(stage, cfg.run_dir, cfg.run_dir, 1, ("base", "trained"))
    assert tracking.active() is None


def test_numeric_leaves_flatten_metrics_and_intervals():
    leaves = tracking.numeric_leaves({"a": {"b": 1, "ci95": [0.1, 0.9], "ok": True, "s": "x", "nan": float("nan")},
                                      "c d": 2.5, "e(f)": 3}, "round-1/grow")
    assert leaves == {"round-1/grow/a/b": 1.0, "round-1/grow/a/ci95_lo": 0.1, "round-1/grow/a/ci95_hi": 0.9,
                      "round-1/grow/c d": 2.5, "round-1/grow/e_f_": 3.0}


def test_a_uri_is_printed_without_its_credentials():
    assert tracking.redact("https://user:s3cret@mlflow.example:5000/x") == "https://mlflow.example:5000/x"
    assert tracking.redact("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"


def test_no_tracker_asked_for_opens_nothing(tmp_path, clean_env):
    cfg = load_config("local", [f"runs_dir={tmp_path}", "train.loggers=[tensorboard]"])
    with tracking.session(cfg) as trackers:
        assert trackers is None and tracking.active() is None
        tracking.stage_done("grow", cfg.run_dir, cfg.run_dir, 1)  # a no-op
    assert not (cfg.run_dir / "mlflow").exists()


def test_mlflow_gets_the_run_its_stages_and_its_training_run(tmp_path, clean_env):
    from mlflow import MlflowClient

    cfg = load_config("local", [f"runs_dir={tmp_path}", "name=study", "train.loggers=[mlflow]"])
    plant_round(cfg.run_dir)
    logs: list[str] = []
    log_a_round(cfg, logs)
    log_a_round(cfg, logs)  # a rerun logs on into the same run

    client = MlflowClient(tracking_uri=f"sqlite:///{cfg.run_dir / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("pbt-ray")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert [r.info.run_name for r in parents] == ["study"]
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags[tracking.RUN_DIR_TAG] == str(cfg.run_dir)
    metrics = parent.data.metrics
    assert metrics["round-1/grow/grown"] == 19 and metrics["round-1/grow/none_rate_ci95_hi"] == 0.31
    assert metrics["round-1/mine/pairs/resist"] == 3 and metrics["round-1/train/global_step"] == 2
    assert metrics["eval/trained/are-you-sure/accuracy_after/value"] == 0.5
    assert metrics["eval/trained/are-you-sure/accuracy_after/ci95_lo"] == 0.1
    assert not any(k.startswith("eval/trained-round-2/") for k in metrics)  # another round's: logged by that round
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "report")] == ["report/report.html"]
    assert {r.info.run_name for r in children} == {"study/dpo/dpo-abc"}
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    history = client.get_metric_history(children[0].info.run_id, "dpo/loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.69), (2, 0.61)]
    assert any("MLflow: run study" in line for line in logs)


def test_wandb_writes_offline_run_files_without_an_api_key(tmp_path, clean_env):
    cfg = load_config("local", [f"runs_dir={tmp_path}", "name=study", "train.loggers=[wandb]"])
    plant_round(cfg.run_dir)
    logs: list[str] = []
    log_a_round(cfg, logs)
    offline = sorted((cfg.run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 2  # the pbt run and its training run
    data = b"".join(path.read_bytes() for path in offline)
    for key in (b"round-1/grow/grown", b"eval/trained/are-you-sure/accuracy_after/value", b"dpo/loss", b"study/dpo/dpo-abc"):
        assert key in data, key
    assert any("W&B: run study (offline" in line for line in logs)


def test_a_failing_tracker_is_dropped_with_one_warning_and_the_run_goes_on():
    class Broken:
        calls = 0

        def log(self, metrics, step):
            Broken.calls += 1
            raise ConnectionError("server down")

    logs: list[str] = []
    trackers = tracking.Trackers({"mlflow": Broken()}, logs.append)
    trackers.log_metrics({"a": 1.0})
    trackers.log_metrics({"a": 2.0})
    assert Broken.calls == 1 and trackers.runs == {}
    assert len(logs) == 1 and "mlflow failed to log metrics (ConnectionError: server down)" in logs[0]
