"""The loop's bookkeeping without Ray: rounds (what round k serves, trains and is called), stage state, --from."""

from __future__ import annotations

import json

import pytest

from pbt_ray import loop
from pbt_ray.config import ConfigError, load_config
from pbt_ray.serving.trained import TRAINED_ID


def cfg_in(tmp_path, *overrides):
    return load_config("local", [f"runs_dir={tmp_path}", *overrides])


def test_round_one_is_the_run_itself(tmp_path):
    cfg = cfg_in(tmp_path, "rounds=3")
    assert loop.round_config(cfg, 1) is cfg
    assert loop.round_dir(cfg, 1) == tmp_path / "local"
    assert loop.eval_label(1) == "trained" and loop.eval_label(3) == "trained-round-3"


def test_round_k_feeds_the_previous_model_back_in(tmp_path):
    cfg = cfg_in(tmp_path, "rounds=2", "train.run_name=dpo")
    previous = tmp_path / "local" / "merged"
    r2 = loop.round_config(cfg, 2, previous)
    assert r2.run_dir == tmp_path / "local" / "round-2" == loop.round_dir(cfg, 2)
    # The previous round's model is served and debates as the persuadee; persuader and extractor stay.
    served = {m.id: m.source for m in r2.serve.models}
    assert served[TRAINED_ID] == str(previous) and served["smollm2-135m-instruct"] == "embedded"
    assert r2.serve.roles["persuadee"] == TRAINED_ID
    assert r2.serve.roles["persuader"] == r2.serve.roles["extractor"] == "smollm2-135m-instruct"
    # It is trained from (and DPO-referenced to) the previous model, in its own Ray Train run.
    assert r2.train.base_model == str(previous) and r2.train.run_name == "dpo-round-2"
    # New samples, but the same held-out questions.
    assert r2.grow.seed == cfg.grow.seed + 1 and r2.mine.seed == cfg.mine.seed
    assert cfg.serve.roles["persuadee"] == "smollm2-135m-instruct"  # the original is untouched
    both = loop.round_config(cfg_in(tmp_path, "rounds=2", "feed_roles=[persuadee,persuader]"), 2, previous)
    assert both.serve.roles["persuader"] == both.serve.roles["persuadee"] == TRAINED_ID
    assert both.serve.roles["extractor"] == "smollm2-135m-instruct"
    with pytest.raises(loop.LoopError, match="needs round 1's trained model"):
        loop.round_config(cfg, 2, None)


def test_rounds_need_the_app(tmp_path):
    with pytest.raises(ConfigError, match="grow.endpoint"):
        cfg_in(tmp_path, "rounds=2", "grow.endpoint=http://elsewhere:8000/v1")
    with pytest.raises(ConfigError, match="rounds"):
        cfg_in(tmp_path, "rounds=0")


def finish(cfg, rounds=None):
    """Record every stage of every round as done with today's fingerprints (what a finished run leaves)."""
    from pbt_ray.stages import fingerprint

    states = {k: loop.load_state(loop.round_dir(cfg, k)) for k in range(1, cfg.rounds + 1)}
    for k in rounds or states:
        config, extra = loop._round_inputs(cfg, states, k)
        for stage in loop._stages(k):
            fp = fingerprint(stage, config, states[k].outputs(), extra.get(stage.name))
            states[k].record(stage, fp, config, f"out-{stage.name}-{k}")
    return states


def test_state_is_kept_per_directory_and_from_forgets_later_stages(tmp_path):
    from pbt_ray.stages import StageState, downstream

    cfg = cfg_in(tmp_path)
    finish(cfg)
    state = loop.load_state(cfg.run_dir)
    assert list(state.stages) == list(loop.LOOP_STAGES)
    assert {n: v for n, v, _ in loop.plan(cfg, {1: state})[1]} == dict.fromkeys(loop.LOOP_STAGES, "done")
    state.forget(downstream(loop._stages(1), "train"))
    verdicts = {n: v for n, v, _ in loop.plan(cfg, {1: StageState.load(cfg.run_dir)})[1]}
    assert verdicts == {"debate": "done", "grow": "done", "mine": "done", "train": "to run", "eval": "to run",
                        "report": "to run"}
    (cfg.run_dir / loop.STATE_FILE).write_text(json.dumps({"version": 99, "stages": {}}))
    with pytest.raises(loop.LoopError, match="version 99"):
        loop.load_state(cfg.run_dir)


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path):
    cfg = cfg_in(tmp_path, "rounds=2")
    finish(cfg)
    before = (cfg.run_dir / loop.STATE_FILE).read_text()
    logged = []
    assert loop.run(load_config("local", [f"runs_dir={tmp_path}", "rounds=2", "train.epochs=4"]), log=logged.append,
                    dry_run=True) == 0
    text = logged[0]
    assert "grow     done" in text and "train    stale   config changed: train.epochs" in text
    assert "eval     to run  after train" in text and "round 2" in text
    assert "grow     to run  after round 1" in text  # round 2 grows from round 1's (retrained) model
    assert loop.run(cfg, log=logged.append, from_stage="mine", dry_run=True) == 0
    assert "mine     to run  asked to rerun (--from)" in logged[-1]
    assert (cfg.run_dir / loop.STATE_FILE).read_text() == before


def test_a_config_edit_reruns_that_stage_and_everything_after_it_only(tmp_path, monkeypatch):
    """Issue 14.3: `train.epochs` edited -> train, eval and report run again; debate, grow and mine do not.
    Issue 14.2: a grow that left a tree unfinished -> the rerun grows it and mines, trains, evaluates again."""
    import contextlib

    import pbt_ray.runtime

    cfg = cfg_in(tmp_path)
    ran = []

    class Summary:
        grown, already_done, failed, problems, turns, generated_tokens, seconds, tokens_per_s = 1, 0, 0, [], 0, 0, 1, 0
        failures, reads = [], {}

    failed = {"n": 1}

    def fake_grow(cfg, url, log=print):
        ran.append("grow")
        (cfg.run_dir / "trees").mkdir(parents=True, exist_ok=True)
        summary = Summary()
        summary.failed = failed["n"]
        return summary

    monkeypatch.setattr(pbt_ray.runtime, "ray_cluster", lambda cfg, log=print: contextlib.nullcontext())
    monkeypatch.setattr(loop, "debater_endpoint", lambda cfg, log=print: contextlib.nullcontext("http://app/v1"))
    monkeypatch.setattr(loop, "debate", lambda cfg, url, q=None: ran.append("debate") or fixture_debate())
    monkeypatch.setattr("pbt_ray.dialogue.pipeline.grow_trees", fake_grow)
    monkeypatch.setattr(loop, "mine_stage", lambda cfg, url, log=print: ran.append("mine") or {"selected": {}})
    def fake_train(cfg, attempt, log):
        ran.append(f"train{attempt}")
        outputs["train"] = f"adapter-{len(ran)}"  # every training leaves a new adapter
        return {}

    monkeypatch.setattr(loop, "_train_stage", fake_train)
    monkeypatch.setattr(loop, "_eval_stage", lambda top, k, cfg, url, log, attempt_key=None: ran.append("eval") or outputs.update(
        eval=f"metrics-{len(ran)}"))
    monkeypatch.setattr("pbt_ray.evaluation.report.write_report", lambda run_dir, log=print: ran.append("report"))
    monkeypatch.setattr(loop, "format_grow_summary", lambda summary, cfg: "")
    outputs = {"grow": "trees-1"}
    # What each stage leaves follows from its inputs (new trees give new pairs, a new adapter, ...).
    monkeypatch.setattr(loop, "stage_output", lambda top, c, name: outputs.get(name, f"out-{name}-{outputs['grow']}"))

    assert loop.run(cfg, log=lambda *_: None) == 1  # a tree failed: the exit code says so
    assert ran == ["debate", "grow", "mine", "train0", "eval", "report"]
    ran.clear()
    failed["n"], outputs["grow"] = 0, "trees-2"  # the rerun grows the missing tree
    assert loop.run(cfg, log=lambda *_: None) == 0
    assert ran == ["grow", "mine", "train0", "eval", "report"]
    ran.clear()
    assert loop.run(cfg, log=lambda *_: None) == 0 and ran == []  # nothing changed: nothing runs
    edited = cfg_in(tmp_path, "train.epochs=4")
    assert loop.run(edited, log=lambda *_: None) == 0
    assert ran == ["train0", "eval", "report"]
    ran.clear()
    assert loop.run(edited, log=lambda *_: None, from_stage="train") == 0
    assert ran == ["train1", "eval", "report"]  # --from: a new attempt, so Ray Train starts a new run
    ran.clear()
    assert loop.run(cfg_in(tmp_path, "train.epochs=4", "grow.max_growers=5"), log=lambda *_: None) == 0
    assert ran == []  # an operational knob changes no result
    # --from grow grows afresh: the old trees are moved aside (a resuming grow would skip every finished tree,
    # so nothing would be regrown), never deleted.
    (edited.run_dir / "trees" / "part-old.parquet").write_text("old")
    assert loop.run(edited, log=lambda *_: None, from_stage="grow") == 0
    assert ran == ["grow", "mine", "train2", "eval", "report"]
    (aside,) = edited.run_dir.glob("trees.stale-*")
    assert (aside / "part-old.parquet").is_file() and not (edited.run_dir / "trees" / "part-old.parquet").exists()


def fixture_debate():
    from tests.unit.pbt_fixtures import fixture_tree

    tree = fixture_tree("F1")
    tree.status = "complete"
    return tree


def test_redoing_a_round_moves_later_rounds_aside(tmp_path):
    cfg = cfg_in(tmp_path, "rounds=3")
    run = cfg.run_dir
    for k in (2, 3):
        (run / f"round-{k}" / "trees").mkdir(parents=True)
        (run / "eval" / loop.eval_label(k) / "team").mkdir(parents=True)
    (run / "eval" / "trained" / "team").mkdir(parents=True)
    logged = []
    loop.retire_later_rounds(cfg, 2, log=logged.append)
    assert (run / "round-2").is_dir() and not (run / "round-3").exists()
    (aside,) = run.glob("round-3.stale-*")
    assert (aside / "trees").is_dir() and (aside / "eval-trained-round-3" / "team").is_dir()
    assert sorted(p.name for p in (run / "eval").iterdir()) == ["trained", "trained-round-2"]
    assert "round 3" in logged[0]
    loop.retire_later_rounds(cfg, 1, log=logged.append)
    assert sorted(p.name.split(".")[0] for p in run.glob("round-*")) == ["round-2", "round-3"]
    assert not (run / "round-2").exists() and (run / "eval").is_dir()


def test_run_checks_the_round_before_starting_anything(tmp_path):
    with pytest.raises(loop.LoopError, match="runs rounds 1..2"):
        loop.run(cfg_in(tmp_path, "rounds=2"), from_stage="grow", from_round=3)
    cfg = cfg_in(tmp_path, "rounds=3")
    (cfg.run_dir / "round-3").mkdir(parents=True)
    with pytest.raises(loop.LoopError, match="not a stage of this round"):
        loop.run(cfg, from_stage="debate", from_round=2)
    assert (cfg.run_dir / "round-3").is_dir()  # a bad --from moved nothing aside


def test_redoing_an_evaluation_keeps_later_rounds(tmp_path, monkeypatch):
    """Only debate..train give the next round its model: `--from report --round 2` leaves round 3 alone."""
    import contextlib

    import pbt_ray.runtime

    cfg = cfg_in(tmp_path, "rounds=3")
    finish(cfg)
    metrics = cfg.run_dir / "eval" / "base" / "team" / "metrics.json"
    metrics.parent.mkdir(parents=True)
    metrics.write_text(json.dumps({"items": 1, "metrics": {"team_accuracy": 0.5}}))
    monkeypatch.setattr(pbt_ray.runtime, "ray_cluster", lambda cfg, log=print: contextlib.nullcontext())
    monkeypatch.setattr(loop, "trained_model", lambda run_dir, log=print: run_dir / "merged")  # no merging here
    logged = []
    assert loop.run(cfg, log=logged.append, from_stage="report", from_round=2) == 0
    assert (cfg.run_dir / "round-3").is_dir() and not list(cfg.run_dir.glob("round-3.stale-*"))
    assert (cfg.run_dir / "report" / "report.json").is_file()
    assert any("already done, skipped: grow, mine, train, eval" in line for line in logged)


def test_a_finished_run_starts_nothing(tmp_path):
    cfg = cfg_in(tmp_path, "rounds=2")
    finish(cfg)
    logged = []
    assert loop.run(cfg, log=logged.append) == 0  # no Ray: it would fail to start without a cluster spec here
    assert "every stage of" in logged[0]


def test_in_process_cluster_holds_the_loops_peak():
    """Round k >= 2 trains while round k-1's model is served: base engine (2) + trained engine (2) + ingress (1)
    + 2 Train workers (1 each) must all fit at once (a 6-CPU cluster left one Train worker pending)."""
    from pbt_ray.runtime import local_logical_cpus

    assert local_logical_cpus(load_config("local")) == 7
    assert local_logical_cpus(load_config("local", ["train.num_workers=4"])) == 9


def test_the_loop_mines_with_the_stance_check_when_configured(tmp_path, monkeypatch):
    """Issue 13.2: `pbt run` ignored mine.stance_check; it now confirms stances through the app's extractor."""
    import pbt_ray.preferences.mining as mining
    import pbt_ray.preferences.stance as stance

    seen = []
    monkeypatch.setattr(mining, "mine", lambda cfg, **kw: seen.append(kw) or {"selected": {}})
    monkeypatch.setattr(stance, "endpoint_stance_check", lambda url, model, timeout, **kw: ("check", url, model))
    loop.mine_stage(cfg_in(tmp_path), "http://app/v1")
    loop.mine_stage(cfg_in(tmp_path, "mine.stance_check=true"), "http://app/v1")
    assert seen[0]["stance_check"] is None
    assert seen[1]["stance_check"] == ("check", "http://app/v1", "extractor")
    assert seen[1]["trees"] == str(cfg_in(tmp_path).run_dir)


def test_grow_summary_reports_the_none_rate(tmp_path):
    from pbt_ray.dialogue.pipeline import GrowSummary, reading_counts
    from tests.unit.pbt_fixtures import fixture_tree

    tree = fixture_tree("F6")
    tree.nodes[0].read_by, tree.nodes[1].read_by, tree.nodes[2].outcome = "rule", "constrained", "none"
    counts = reading_counts(tree)
    assert counts["none"] == 1 and counts["read_by:rule"] == 1 and counts["read_by:constrained"] == 1
    summary = GrowSummary(grown=1, turns=10, reads={"none": 3, "answer": 6, "disagree": 1, "read_by:rule": 10})
    text = loop.format_grow_summary(summary, cfg_in(tmp_path))
    assert "answers read (extract.mode rules): NONE in 3 of 10 turns (30.0%); answer 6, agree 0, disagree 1; read by rule 10" in text
    summary.none_rate_ci95 = [0.2, 0.4]
    assert "NONE in 3 of 10 turns (30.0%, 95% CI 20.0%-40.0% over trees)" in loop.format_grow_summary(summary, cfg_in(tmp_path))


def test_a_run_of_an_older_version_is_taken_as_it_is(tmp_path):
    cfg = cfg_in(tmp_path)
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / loop.STATE_FILE).write_text(json.dumps({"version": 1, "done": dict.fromkeys(loop.LOOP_STAGES, {})}))
    logged = []
    assert loop.run(cfg, log=logged.append) == 0  # nothing reruns, no cluster starts
    assert "took debate, grow, mine, train, eval, report as done" in logged[0] and "every stage of" in logged[1]
    assert json.loads((cfg.run_dir / loop.STATE_FILE).read_text())["version"] == 2


def test_a_rerun_with_only_the_evaluation_left_serves_the_trained_model_from_the_start(tmp_path, monkeypatch):
    """After a crash mid-evaluation the rerun deploys base and trained at once: one deploy, and the app a crashed
    job left running (same models, same versions) is kept as it is instead of losing its trained model."""
    import contextlib

    import pbt_ray.runtime

    cfg = cfg_in(tmp_path)
    served = []
    monkeypatch.setattr(pbt_ray.runtime, "ray_cluster", lambda cfg, log=print: contextlib.nullcontext())
    monkeypatch.setattr(loop, "debater_endpoint", lambda c, log=print: served.append(
        sorted(m.id for m in c.serve.models)) or contextlib.nullcontext("http://app/v1"))
    monkeypatch.setattr(loop, "debate", lambda cfg, url, q=None: fixture_debate())
    monkeypatch.setattr(loop, "_grow_and_mine", lambda r, url: [r.done(n) for n in ("grow", "mine")] and True)
    monkeypatch.setattr(loop, "_train_stage", lambda cfg, attempt, log: (cfg.run_dir / "adapter").mkdir() or {})
    monkeypatch.setattr("pbt_ray.serving.trained.has_adapter", lambda run_dir: (run_dir / "adapter").is_dir())
    monkeypatch.setattr(loop, "trained_config", lambda c, log=print: c.model_copy(update={"serve": c.serve.model_copy(
        update={"models": [*c.serve.models, c.serve.models[0].model_copy(update={"id": "pbt-trained"})]})}))
    crash = {"eval": True}

    def fake_eval(top, k, cfg, url, log, attempt_key=None):
        if crash.pop("eval", False):
            raise KeyboardInterrupt  # the driver dies mid-evaluation
    monkeypatch.setattr(loop, "_eval_stage", fake_eval)
    monkeypatch.setattr("pbt_ray.evaluation.report.write_report", lambda run_dir, log=print: None)
    monkeypatch.setattr(loop, "format_grow_summary", lambda summary, cfg: "")
    monkeypatch.setattr(loop, "stage_output", lambda top, c, name: f"out-{name}")

    with pytest.raises(KeyboardInterrupt):
        loop.run(cfg, log=lambda *_: None)
    assert served == [["smollm2-135m-instruct"]]  # a fresh run trains first: the base alone
    assert loop.run(cfg, log=lambda *_: None) == 0
    assert served[1] == ["pbt-trained", "smollm2-135m-instruct"]  # only eval left: both from the start
