"""Stage fingerprints (pbt_ray/stages.py): what is stale after a config edit or a partial upstream, pure."""

from __future__ import annotations

import json

import pytest

from pbt_ray.config import load_config
from pbt_ray.stages import PBT_STAGES, StageError, StageState, downstream, fingerprint, stage_named, status


def dumped(*overrides):
    return load_config("local", list(overrides)).model_dump(mode="json")


def finish_all(state, config, outputs=None):
    outputs = outputs or {}
    for stage in PBT_STAGES:
        fp = fingerprint(stage, config, state.outputs())
        state.record(stage, fp, config, outputs.get(stage.name, f"out-{stage.name}"))


def verdicts(config, state):
    return {name: verdict for name, verdict, _ in status(PBT_STAGES, config, state)}


def test_a_config_edit_reruns_that_stage_and_what_reads_it_and_nothing_before(tmp_path):
    state = StageState(tmp_path)
    finish_all(state, dumped())
    assert set(verdicts(dumped(), state).values()) == {"done"}
    edited = verdicts(dumped("train.epochs=4"), state)
    assert edited == {"debate": "done", "grow": "done", "mine": "done", "train": "stale", "eval": "to run",
                      "report": "to run"}
    (why,) = [w for name, _, w in status(PBT_STAGES, dumped("train.epochs=4"), state) if name == "train"]
    assert why == "config changed: train.epochs"
    assert verdicts(dumped("mine.balance=balanced"), state)["grow"] == "done"
    assert verdicts(dumped("mine.balance=balanced"), state)["mine"] == "stale"
    assert verdicts(dumped("grow.temperature=0.5"), state)["grow"] == "stale"


def test_operational_knobs_never_throw_work_away(tmp_path):
    state = StageState(tmp_path)
    finish_all(state, dumped())
    for knob in ("grow.max_growers=3", "grow.batch_size=9", "train.checkpoint_every=7", "eval.concurrency=5",
                 "serve.models.0.max_replicas=2", "train.storage_path=/elsewhere"):
        assert set(verdicts(dumped(knob), state).values()) == {"done"}, knob


def test_a_partial_upstream_reruns_everything_after_it(tmp_path):
    """Issue 14.2: a grow that left trees unfinished; the rerun grows them, and mine..report run again."""
    state = StageState(tmp_path)
    config = dumped()
    grow = stage_named(PBT_STAGES, "grow")
    state.record(grow, fingerprint(grow, config, {}), config, "trees-7-of-8", complete=False, info={"failed": 1})
    for name in ("mine", "train", "eval", "report"):
        stage = stage_named(PBT_STAGES, name)
        state.record(stage, fingerprint(stage, config, state.outputs()), config, f"out-{name}")
    assert verdicts(config, state)["grow"] == "to run"
    assert all(verdicts(config, state)[n] == "to run" for n in ("mine", "train", "eval", "report"))
    # The rerun grows the missing tree: a new output digest makes mine's fingerprint differ.
    state.record(grow, fingerprint(grow, config, {}), config, "trees-8-of-8")
    mine = stage_named(PBT_STAGES, "mine")
    assert fingerprint(mine, config, state.outputs()) != state.stages["mine"]["fingerprint"]
    assert verdicts(config, state)["mine"] == "stale"


def test_from_forgets_downstream_and_counts_attempts(tmp_path):
    state = StageState(tmp_path)
    finish_all(state, dumped())
    state.forget(downstream(PBT_STAGES, "train"))
    assert downstream(PBT_STAGES, "train") == ["train", "eval", "report"]
    assert StageState.load(tmp_path).attempt("train") == 1
    assert verdicts(dumped(), StageState.load(tmp_path))["train"] == "to run"
    assert verdicts(dumped(), StageState.load(tmp_path))["mine"] == "done"


def test_state_files_old_and_broken(tmp_path):
    (tmp_path / "loop_state.json").write_text(json.dumps({"version": 1, "done": {"grow": {}, "mine": {}}}))
    state = StageState.load(tmp_path)
    assert verdicts(dumped(), state)["grow"] == "stale"  # an old record: rerun, nothing deleted
    (tmp_path / "loop_state.json").write_text("{not json")
    with pytest.raises(StageError, match="not readable JSON"):
        StageState.load(tmp_path)


def test_a_field_added_later_leaves_older_fingerprints_alone_until_it_is_set(tmp_path):
    """grow.question_ids came after runs existed: unset, it is not hashed (an upgrade keeps finished stages done);
    set, grow and everything after it are stale."""
    from pbt_ray.stages import config_slice

    grow = stage_named(PBT_STAGES, "grow")
    config = dumped()
    assert "question_ids" not in config_slice(grow, config)["grow"]
    legacy = json.loads(json.dumps(config))
    del legacy["grow"]["question_ids"]  # what an older pbt-ray dumped
    assert fingerprint(grow, legacy, {}) == fingerprint(grow, config, {})
    state = StageState(tmp_path)
    finish_all(state, config)
    changed = verdicts(dumped("grow.question_ids=[commonsense-001]"), state)
    assert changed["debate"] == "done" and changed["grow"] == "stale" and changed["mine"] == "to run"
