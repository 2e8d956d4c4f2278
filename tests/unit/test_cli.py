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


def test_eval_flags_are_validated_like_dotted_overrides(capsys):
    """`pbt eval --limit -1` evaluated all but one item and `--limit 0` was ignored: the flags bypassed the config's
    validation. They are overrides now: one line naming the field, exit 2, before any endpoint is asked."""
    for bad in ("-1", "0"):
        assert main(["eval", "balanced", "--limit", bad, "--url", "http://127.0.0.1:9"]) == 2
        err = capsys.readouterr().err
        assert "eval.limit" in err and "greater than 0" in err and "[from override 'eval.limit=" in err
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 3


@pytest.fixture
def tiny_endpoint():
    """A stand-in OpenAI endpoint that lists one model and answers 404 for any other (pure HTTP, no engine)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send(200, {"object": "list", "data": [{"id": "only-model", "object": "model"}]})

        def do_POST(self):
            self._send(404, {"error": {"message": "model not found", "type": "NotFoundError", "code": 404}})

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_eval_of_a_model_the_endpoint_does_not_serve_fails_up_front(tiny_endpoint, tmp_path, capsys):
    """`pbt eval --model typo` failed every item with 404 and exited 0."""
    code = main(["eval", "are-you-sure", f"runs_dir={tmp_path}", "--url", tiny_endpoint, "--model", "typo", "-c", "local"])
    err = capsys.readouterr().err
    assert code == 1 and "--model typo: not a model of" in err and "only-model" in err and "Traceback" not in err
    assert not (tmp_path / "local" / "eval").exists()  # nothing was evaluated or written


def test_eval_whose_every_item_fails_exits_nonzero(tiny_endpoint, tmp_path, capsys):
    code = main(["eval", "are-you-sure", f"runs_dir={tmp_path}", "eval.limit=2", "serve.request_timeout_s=5",
                 "--url", tiny_endpoint, "--model", "only-model", "-c", "local"])
    err = capsys.readouterr().err
    assert code == 1 and "every one of the 2 are-you-sure items failed" in err and "results.jsonl" in err
