"""A driver killed mid-evaluation: the rerun of the same eval stage keeps the suites that attempt finished whole
(no failed item) and evaluates the rest; another attempt key (config changed, `--from eval`) evaluates again."""

from __future__ import annotations

import json

from pbt_ray.config import load_config
from pbt_ray.evaluation.stage import evaluate, finished_suite

UNREACHABLE = "http://127.0.0.1:9/v1"  # discard port: any request would fail every item


def write_suite(out_dir, key, failed=0, results=True):
    out_dir.mkdir(parents=True)
    if results:
        (out_dir / "results.jsonl").write_text('{"question_id": "q1"}\n')
    (out_dir / "metrics.json").write_text(json.dumps({"suite": "are-you-sure", "items": 1, "failed": failed,
                                                      "metrics": {}, "attempt_key": key}))


def test_finished_suite_needs_the_same_key_whole_results_and_no_failed_item(tmp_path):
    write_suite(tmp_path / "a", "fp-0")
    assert finished_suite(tmp_path / "a", "fp-0")["items"] == 1
    assert finished_suite(tmp_path / "a", "fp-1") is None  # `--from eval` counts an attempt: evaluated again
    assert finished_suite(tmp_path / "a", "other-0") is None  # another config or another adapter
    write_suite(tmp_path / "b", "fp-0", failed=1)
    assert finished_suite(tmp_path / "b", "fp-0") is None  # failed items are redone
    write_suite(tmp_path / "c", "fp-0", results=False)
    assert finished_suite(tmp_path / "c", "fp-0") is None
    assert finished_suite(tmp_path / "missing", "fp-0") is None
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "metrics.json").write_text("{trunc")
    assert finished_suite(tmp_path / "d", "fp-0") is None


def test_evaluate_keeps_a_finished_suite_without_asking_the_endpoint(tmp_path):
    cfg = load_config("local", [f"runs_dir={tmp_path}"])
    out = cfg.run_dir / "eval" / "trained" / "are-you-sure"
    write_suite(out, "fp-0")
    logs = []
    kept = evaluate(cfg, "are-you-sure", UNREACHABLE, label="trained", log=logs.append, attempt_key="fp-0")
    assert kept["items"] == 1 and kept["failed"] == 0
    assert logs == ["[pbt] eval are-you-sure (trained): kept from the interrupted attempt of this stage (1 items, 0 failed)"]
    assert json.loads((out / "metrics.json").read_text())["attempt_key"] == "fp-0"
