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


def test_state_is_kept_per_directory_and_from_forgets_later_stages(tmp_path):
    state = loop.load_state(tmp_path)
    assert state == {"version": loop.STATE_VERSION, "done": {}}
    for stage in loop.LOOP_STAGES:
        loop.mark_done(tmp_path, state, stage, {"n": 1})
    assert list(loop.load_state(tmp_path)["done"]) == list(loop.LOOP_STAGES)
    assert list(loop.load_state(tmp_path, "train")["done"]) == ["debate", "grow", "mine"]
    with pytest.raises(loop.LoopError, match="not a stage of this round"):
        loop.load_state(tmp_path, "debate", loop.ROUND_STAGES)  # later rounds hold no debate
    (tmp_path / loop.STATE_FILE).write_text(json.dumps({"version": 99, "done": {}}))
    with pytest.raises(loop.LoopError, match="another pbt-ray version"):
        loop.load_state(tmp_path)


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
    for k in (1, 2, 3):
        state = loop.load_state(loop.round_dir(cfg, k))
        for stage in loop._stages(k):
            loop.mark_done(loop.round_dir(cfg, k), state, stage)
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
    for k in (1, 2):
        directory = loop.round_dir(cfg, k)
        state = loop.load_state(directory)
        for stage in loop._stages(k):
            loop.mark_done(directory, state, stage)
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
