"""The `pbt` command tree, its help and its errors (no Ray, no engine)."""

import subprocess
import sys

import pytest
import yaml

from pbt_ray.cli import build_parser, main

STAGES = ["run", "serve", "debate", "grow", "view", "mine", "train", "plan-train", "eval", "report", "model", "config", "bench"]


def test_every_stage_has_a_subcommand_with_help():
    text = build_parser().format_help()
    for stage in STAGES:
        assert stage in text
    for stage in STAGES:
        with pytest.raises(SystemExit) as exit_:
            main([stage, "--help"])
        assert exit_.value.code == 0


def test_config_errors_exit_2_with_the_field(capsys):
    assert main(["config", "-c", "local", "serve.port=nope"]) == 2
    assert "serve.port: Input should be a valid integer" in capsys.readouterr().err
    assert main(["serve", "-c", "no-such-preset"]) == 2
    assert "Unknown preset 'no-such-preset'" in capsys.readouterr().err


def test_config_prints_resolved_yaml(capsys):
    assert main(["config", "-c", "local", "serve.port=8777"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["serve"]["port"] == 8777
    assert main(["config", "--list-presets"]) == 0
    assert set(capsys.readouterr().out.split()) >= {"local", "gpu-paper"}


def test_unreachable_endpoint_fails_fast_and_clearly(capsys):
    assert main(["debate", "--url", "http://127.0.0.1:9", "-c", "local", "serve.request_timeout_s=5"]) == 1
    err = capsys.readouterr().err
    assert "Cannot reach the OpenAI endpoint at http://127.0.0.1:9" in err and "pbt serve" in err


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "pbt_ray", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("pbt-ray ")


def test_mine_and_train_report_missing_inputs_without_starting_ray(tmp_path, capsys):
    assert main(["mine", "--no-ray", "--trees", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "-c", "local", f"runs_dir={tmp_path}"]) == 1
    assert "run `pbt mine` first" in capsys.readouterr().err


@pytest.mark.parametrize("script,stage", [("run_loop", "run"), ("grow", "grow"), ("mine", "mine"), ("train", "train"),
                                          ("serve", "serve"), ("eval", "eval"), ("report", "report")])
def test_every_stage_has_a_job_entrypoint(script, stage):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "jobs" / f"{script}.py").read_text()
    assert f'main(["{stage}", *sys.argv[1:]])' in text and "ray job submit" in text
