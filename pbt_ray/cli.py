"""The `pbt` command: one subcommand per stage of the loop.

Every config-driven subcommand takes ``-c/--config`` (a preset name or a YAML file) and dotted
overrides after it, e.g. ``pbt serve -c local serve.port=8001``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from pbt_ray import __version__

# Stages that later work fills in; until then they say so and exit with this code.
NOT_BUILT = {
}
EXIT_NOT_BUILT = 3


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", default="local", help="preset name (local, gpu-paper) or YAML file [local]")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. serve.port=8001")


class _Parser(argparse.ArgumentParser):
    """A usage error is one line, like every other error of `pbt` (argparse would print the usage block first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; `{self.prog} --help` lists the arguments\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pbt",
        description="Persuasion-Balanced Training on Ray: serve debaters, grow dialogue trees, mine pairs, "
        "train with DPO, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"pbt-ray {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="the main job: serve, debate, grow, mine, train, evaluate base and trained, report")
    _add_config_args(p)
    p.add_argument("--question", help="debate this question instead of the first bundled one")
    p.add_argument("--from", dest="from_stage", metavar="STAGE",
                   help="redo this stage and every later one (debate, grow, mine, train, eval, report); finished "
                        "stages are otherwise skipped")
    p.add_argument("--dry-run", action="store_true",
                   help="print each stage of each round as done, stale (and why) or to run, and change nothing")
    p.add_argument("--round", dest="from_round", type=int, default=1, metavar="K",
                   help="with --from: the round whose stage is redone (rounds: N in the config); later rounds are "
                        "moved aside and run again [1]")

    p = sub.add_parser("serve", help="start the debater Serve app (OpenAI API) and keep it running")
    _add_config_args(p)
    p.add_argument("--print-serve-config", action="store_true", help="print a Serve config file for this config and exit")
    p.add_argument("--trained", metavar="RUN_DIR",
                   help="also serve a trained model: a `pbt train` run directory (or adapter directory); the adapter is "
                        "merged into its base once and served as model 'pbt-trained' (role 'trained')")

    p = sub.add_parser("debate", help="one evaluation-mode debate between speakers A and B, printed as a tree")
    _add_config_args(p)
    p.add_argument("--question", help="question to debate (default: the first bundled trivia question)")
    p.add_argument("--url", help="use a running OpenAI-compatible endpoint instead of starting the app")

    p = sub.add_parser("grow", help="grow persuasion dialogue trees with Ray Data growers against the debater app")
    _add_config_args(p)

    p = sub.add_parser("view", help="render a dialogue tree in the terminal or as HTML")
    p.add_argument("path", nargs="?", help="run directory, trees Parquet file or reference .jsonl [the config's run dir]")
    p.add_argument("--tree", help="tree id or question id to show [the first]")
    p.add_argument("--list", action="store_true", help="list the trees with their sizes instead")
    p.add_argument("--html", metavar="FILE", help="write the tree as an HTML page to FILE")
    p.add_argument("--failed", action="store_true", help="include failed trees")
    _add_config_args(p)

    p = sub.add_parser("mine", help="mine trees into balanced resist/accept preference pairs (TRL-ready Parquet)")
    _add_config_args(p)
    p.add_argument("--trees", help="run directory, trees directory, trees Parquet or reference .jsonl [the config's run dir]")
    p.add_argument("--out", help="output directory [<run dir>/preferences]")
    p.add_argument("--input-format", choices=["auto", "ours", "reference"], help="tree layout [auto: by file suffix]")
    p.add_argument("--mode", choices=["canonical", "reference"], help="mining rule [mine.rule: canonical]")
    p.add_argument("--balance", choices=["balanced", "resist-only", "accept-only", "none"], help="dataset [mine.balance: balanced]")
    p.add_argument("--stance-check", action="store_true", help="confirm each pair's reply stances with the extractor model")
    p.add_argument("--url", help="OpenAI-compatible endpoint for --stance-check [start the debater app]")
    p.add_argument("--no-ray", action="store_true", help="mine in this process instead of Ray Data tasks")

    p = sub.add_parser("train", help="DPO of a LoRA adapter on Ray Train (TRL + PEFT + DeepSpeed ZeRO)")
    _add_config_args(p)
    p.add_argument("--pairs", help="directory written by `pbt mine` [<run dir>/preferences]")
    p.add_argument("--record-samples", action="store_true",
                   help="write the pair rows of every micro-batch to <run dir>/train/samples/ (data-order audit)")

    p = sub.add_parser("plan-train", help="estimate per-GPU and per-node memory of a DPO run; suggest a setting that fits")
    p.add_argument("--model", default="llama-3.1-8b",
                   help="llama-3.1-8b, llama-3.1-70b, llama-3.1-405b, mistral-7b, smollm2-135m, a hub id of those, "
                        "or a directory with config.json [llama-3.1-8b]")
    p.add_argument("--gpus-per-node", type=int, default=8, help="[8]")
    p.add_argument("--nodes", type=int, default=1, help="[1]")
    p.add_argument("--zero", type=int, choices=[0, 2, 3], default=2, help="DeepSpeed ZeRO stage [2]")
    p.add_argument("--offload-optimizer", action="store_true", help="ZeRO-Offload of optimizer states to CPU")
    p.add_argument("--offload-params", action="store_true", help="ZeRO-3: parameters in CPU memory too")
    p.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    p.add_argument("--lora-rank", type=int, default=16, help="[16]")
    p.add_argument("--lora-targets", default="q_proj,k_proj,v_proj", help="[q_proj,k_proj,v_proj]")
    p.add_argument("--seq-len", type=int, default=1000, help="prompt + reply tokens [1000]")
    p.add_argument("--micro-batch", type=int, default=7, help="pairs per GPU per micro-step [7]")
    p.add_argument("--no-checkpointing", action="store_true", help="without gradient checkpointing")
    p.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU [80, H100]")
    p.add_argument("--cpu-memory", type=float, default=1800.0, help="GiB of CPU memory per node [1800]")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("-c", "--config", default=None,
                   help="plan a config's training (train.*: model, workers, ZeRO, micro-batch, length) and check that "
                        "every GPU model it serves, the trained model included (with its base's settings), fits "
                        "its GPUs; the model/setting flags above are then ignored")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="with -c: dotted overrides of the config")

    p = sub.add_parser("eval", help="run a persuasion evaluation against an endpoint: balanced, are-you-sure, "
                                    "misinformation, team")
    p.add_argument("suite", choices=["balanced", "are-you-sure", "misinformation", "team"], help="the evaluation")
    _add_config_args(p)
    p.add_argument("--url", help="OpenAI-compatible endpoint [start the debater app]")
    p.add_argument("--pairs", help="balanced: held-out pairs (test.parquet or a `pbt mine` dir) [<run dir>/preferences]")
    # No type=int: the value goes through the config's validation as eval.limit=..., and fails as an override would.
    p.add_argument("--limit", help="items at most [eval.limit]")
    p.add_argument("--label", default="base", help="name of the evaluated model in the results: <run dir>/eval/LABEL/ [base]")
    p.add_argument("--model", help="model id to evaluate [eval.model, else the persuadee role; 'trained' with --trained]")

    p = sub.add_parser("experiment", help="the paper's conditions x seeds from one set of mined pairs, with intervals "
                       "(experiment.conditions, experiment.seeds)")
    _add_config_args(p)
    p.add_argument("--dry-run", action="store_true", help="print each cell as done or to run, and change nothing")
    p.add_argument("--report-only", action="store_true", help="rewrite experiment.json / .html from the finished cells")

    p = sub.add_parser("report", help="the run's evaluation results as JSON and an HTML report with plots")
    p.add_argument("run_dir", nargs="?", help="run directory [the config's run dir]")
    _add_config_args(p)

    p = sub.add_parser("export", help="a run's adapter (with a model card) and pairs (with a data set card) as a "
                                      "directory the Hugging Face Hub takes as is")
    p.add_argument("run_dir", help="the run directory (holds run.yaml, adapter/, preferences/)")
    p.add_argument("out", help="a new directory to write adapter/ and dataset/ into")

    for name, (what, _) in NOT_BUILT.items():
        p = sub.add_parser(name, help=what)
        _add_config_args(p)

    p = sub.add_parser("model", help="prepare or inspect the embedded model")
    p.add_argument("action", choices=["prepare", "info"], help="prepare: convert once into the cache; info: show paths")

    p = sub.add_parser("config", help="print the resolved configuration (YAML)")
    _add_config_args(p)
    p.add_argument("--list-presets", action="store_true", help="list the bundled presets and exit")

    p = sub.add_parser("bench", help="benchmarks that print side-by-side ratios")
    bench = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    b = bench.add_parser("serve", help="tokens/s through the Serve app vs. the same engine offline")
    _add_config_args(b)
    b.add_argument("--concurrency", default="1,8,32", help="comma-separated concurrency levels [1,8,32]")
    b.add_argument("--max-tokens", type=int, default=64, help="generated tokens per request [64]")
    b.add_argument("--rounds", type=int, default=3, help="measured rounds per level; the median is reported [3]")
    b.add_argument("--load", action="store_true",
                   help="instead: bursts of --concurrency requests at once (try 16,64,512): answered, rejected (503 "
                        "with Retry-After) and other errors, p50/p99 latency per level")
    b.add_argument("--url", help="with --load: an OpenAI endpoint already running (default: deploy the config's app)")
    b.add_argument("--output", help="also write the results as JSON to this file")
    b = bench.add_parser("grow", help="tree growth vs. a flat batch of its requests vs. reference-style growth")
    _add_config_args(b)
    b.add_argument("--questions", type=int, default=16, help="trees grown by (a), (b) and the pipelines [16]")
    b.add_argument("--reference-questions", type=int, default=2, help="trees grown one request at a time by (c) [2]")
    b.add_argument("--no-pipelines", action="store_true", help="skip the `pbt grow` runs with 1 and 2 growers")
    b.add_argument("--reference-engine-requests", type=int, default=6,
                   help="(r): requests of (c) replayed through HF generate without KV cache, as the reference runs "
                        "them (0: skip) [6]")
    b.add_argument("--output", help="also write the results as JSON to this file")
    b = bench.add_parser("train", help="DPO steps/s and tokens/s under Ray Train vs. the same run under torchrun")
    _add_config_args(b)
    b.add_argument("--pairs", help="directory written by `pbt mine` [<run dir>/preferences]")
    b.add_argument("--steps", type=int, default=12, help="optimizer steps per side [12]")
    b.add_argument("--warmup", type=int, default=3, help="first steps left out of the steady state [3]")
    b.add_argument("--rounds", type=int, default=2, help="runs per side, alternating which goes first [2]")
    b.add_argument("--output", help="also write the results as JSON to this file")
    b = bench.add_parser("extract", help="the answer instrument on labelled replies: accuracy of each extraction mode")
    _add_config_args(b)
    b.add_argument("--gold", default="bundled:extraction",
                   help="JSONL file of labelled replies (docs/extraction.md) [bundled:extraction, the set shipped with pbt-ray]")
    b.add_argument("--url", help="OpenAI-compatible endpoint of the extractor (default: start the config's debater app)")
    b.add_argument("--model", help="extractor model id at --url [the config's extractor role]")
    b.add_argument("--modes", help="comma-separated extraction modes, measured side by side: auto, rules, model, prompt "
                                   "[extract.mode of the config, then prompt (the few-shot extractor alone)]")
    b.add_argument("--concurrency", type=int, default=32, help="extractions in flight at once [32]")
    b.add_argument("--output", help="also write the results as JSON (every item's reading) to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse takes the overrides as one run of positionals: `pbt run -c local --dry-run train.epochs=3` left
    # the override after the flag "unrecognized". Any KEY=VALUE is an override, wherever it stands.
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    run_dir = getattr(args, "run_dir", None)
    if args.command == "report" and run_dir and "=" in run_dir and not Path(run_dir).exists():
        # `pbt report -c local runs_dir=x`: the optional positional took the override
        args.overrides, args.run_dir = [run_dir, *args.overrides], None
    from pbt_ray.config import ConfigError
    from pbt_ray.models import ModelError
    from pbt_ray.evaluation.report import ReportError
    from pbt_ray.evaluation.stage import EvalError
    from pbt_ray.loop import LoopError
    from pbt_ray.preferences.mining import MineError
    from pbt_ray.resources import ResourceError
    from pbt_ray.training.data import TrainDataError
    from pbt_ray.training.launch import TrainError
    from pbt_ray.questions import QuestionFileError
    from pbt_ray.serving.app import ServeError
    from pbt_ray.serving.client import EndpointError
    from pbt_ray.serving.chat_format import ChatFormatError
    from pbt_ray.serving.memory import ServingMemoryError
    from pbt_ray.record import RunBusyError
    from pbt_ray.runtime import StorageError
    from pbt_ray.experiment import ExperimentError
    from pbt_ray.storage import StoreError
    from pbt_ray.serving.auth import AuthError
    from pbt_ray.dialogue.pipeline import GrowError
    from pbt_ray.dialogue.tree import TreeSchemaError
    from pbt_ray.evaluation.misinformation import FarmFormatError
    from pbt_ray.stages import StageError
    from pbt_ray.preferences.pairs import PairsFileError
    from pbt_ray.recipes import RecipeError
    from pbt_ray.redteam.data import RedteamDataError

    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("pbt: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # First: an error raised inside a Ray task arrives as RayTaskError(<its class>), an instance of that
        # class too (a MineError in a mining task is a MineError here), and its text is the remote traceback.
        if _from_ray(exc):
            print(_ray_failure(exc, getattr(exc, "pbt_stage", None) or args.command), file=sys.stderr)
            return 1
        if isinstance(exc, ConfigError):
            print(f"pbt: config error: {_one_line(exc)}", file=sys.stderr)
            return 2
        if isinstance(exc, (ModelError, ServeError, EndpointError, QuestionFileError, MineError,
                            TrainDataError, TrainError, ResourceError, EvalError,
                            ReportError, LoopError, ServingMemoryError, ChatFormatError, RunBusyError, StorageError,
                            ExperimentError, StoreError, GrowError, TreeSchemaError, FarmFormatError,
                            StageError, PairsFileError, AuthError, RecipeError, RedteamDataError)):
            print(f"pbt: error: {_one_line(exc)}", file=sys.stderr)
            return 1
        raise  # a bug, not bad input: its traceback is what a report needs


def _one_line(exc: BaseException) -> str:
    """The error's text on one line: one problem, one line, however its message was wrapped."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def _from_ray(exc: BaseException) -> bool:
    """Raised by Ray (a task, an actor, Ray Data, Ray Train) rather than by pbt's own checks. By module, so that
    telling needs no `import ray` in a command that never started it."""
    return any(cls.__module__.split(".")[0] == "ray" for cls in type(exc).__mro__)


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost error under Ray's wrappers: a task error's cause, a failed Train worker's error (the lowest
    rank), a Train controller's error, or the chained cause."""
    seen = {id(exc)}
    while True:
        failures = getattr(exc, "worker_failures", None)
        candidates = [getattr(exc, "cause", None), getattr(exc, "controller_failure", None),
                      failures[min(failures)] if isinstance(failures, dict) and failures else None, exc.__cause__]
        inner = next((c for c in candidates if isinstance(c, BaseException) and id(c) not in seen), None)
        if inner is None:
            return exc
        seen.add(id(inner))
        exc = inner


def _ray_failure(exc: BaseException, stage: str) -> str:
    """One line for a failure inside Ray: the stage, the root cause's message, where Ray's logs are."""
    import re

    root = _root_cause(exc)
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(root)).splitlines() if line.strip()]
    if type(root).__name__.startswith("RayTaskError") and lines:
        text = lines[-1]  # no cause object came back: the remote traceback's last line is the error itself
    else:
        text = f"{type(root).__name__}: {lines[0]}" if lines else type(root).__name__
    if len(text) > 300:
        text = text[:297] + "..."
    from pbt_ray.runtime import ray_logs_hint

    return f"pbt: error: {stage} failed in a Ray task: {text}. {ray_logs_hint()}"


def _dispatch(args: argparse.Namespace) -> int:
    from pbt_ray.config import dump_config, load_config, preset_names

    if args.command == "model":
        return _model(args.action)
    if args.command == "plan-train":
        return _plan_train(args)
    if args.command == "export":
        from pbt_ray.export import ExportError, export_run

        try:
            export_run(args.run_dir, args.out)
        except ExportError as exc:
            print(f"pbt export: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "config" and args.list_presets:
        print("\n".join(preset_names()))
        return 0
    overrides = list(args.overrides)
    if args.command == "eval":  # its flags are config fields: validated and reported like dotted overrides
        overrides += [f"eval.{k}={v}" for k, v in (("limit", args.limit), ("model", args.model)) if v is not None]
    cfg = load_config(args.config, overrides)
    if args.command == "config":
        print(dump_config(cfg), end="")
        return 0
    if args.command in NOT_BUILT:
        what, issue = NOT_BUILT[args.command]
        print(
            f"pbt {args.command}: not built yet ({what}; arrives with {issue}). "
            "Today `pbt run` serves the debaters, holds a demo debate, grows the trees and mines the pairs.",
            file=sys.stderr,
        )
        return EXIT_NOT_BUILT
    if args.command == "serve":
        if args.trained:
            from pbt_ray.serving.trained import merged_model, with_trained_model

            cfg = with_trained_model(cfg, merged_model(args.trained))
        return _serve(cfg, args.print_serve_config, args.config, args.overrides)
    if args.command == "run":
        from pbt_ray.loop import check_run, run

        if args.dry_run:
            return run(cfg, args.question, from_stage=args.from_stage, from_round=args.from_round, dry_run=True)
        check_run(cfg, args.from_stage, args.from_round)  # bad flags or a broken loop_state.json: nothing recorded
        with _recorded(cfg, "run"):
            return run(cfg, args.question, from_stage=args.from_stage, from_round=args.from_round)
    if args.command == "experiment":
        from pbt_ray import experiment

        if args.report_only:
            from pbt_ray.evaluation.experiment_report import write_experiment_report

            write_experiment_report(cfg)
            return 0
        if args.dry_run:
            return experiment.run(cfg, dry_run=True)
        with _recorded(cfg, "experiment"):
            return experiment.run(cfg)
    if args.command == "debate":
        return _debate(cfg, args.question, args.url)
    if args.command == "grow":
        from pbt_ray.dialogue.pipeline import check_grow_inputs

        check_grow_inputs(cfg)  # a bad question file or trees part fails here, before Ray and the run record
        with _recorded(cfg, "grow"):
            return _grow(cfg)
    if args.command == "view":
        return _view(cfg, args)
    if args.command == "mine":
        return _mine(cfg, args)
    if args.command == "train":
        with _recorded(cfg, "train"):
            return _train(cfg, args)
    if args.command == "eval":
        with _recorded(cfg, "eval"):
            return _eval(cfg, args)
    if args.command == "report":
        from pbt_ray.evaluation.report import write_report

        if cfg.recipe == "redteam":  # another recipe's report: its own tables (pbt_ray/evaluation/tables.py)
            from pbt_ray.redteam.evaluate import write_redteam_report

            write_redteam_report(cfg.model_copy(update={"runs_dir": str(Path(args.run_dir).parent), "name": Path(
                args.run_dir).name}) if args.run_dir else cfg)
            return 0
        write_report(args.run_dir or cfg.run_dir)
        return 0
    if args.command == "bench":
        return _bench(cfg, args)
    raise AssertionError(args.command)


def _recorded(cfg, command: str, run_dir: Path | None = None):
    """Hold the run's lock and record what runs (``run.yaml``, ``runs.jsonl``: pbt_ray/record.py)."""
    import contextlib

    from pbt_ray.record import run_lock, write_record

    @contextlib.contextmanager
    def scope():
        from pbt_ray.storage import RunStore

        with run_lock(run_dir or cfg.run_dir, command):
            # A URI runs_dir: work on the local copy, pulled first and pushed when the command ends (and after
            # every stage of `pbt run`), so a crash loses at most the stage in progress.
            store = RunStore.of(cfg) if run_dir is None or Path(run_dir) == cfg.run_dir else None
            if store is not None:
                pulled = store.pull()
                print(f"[pbt] run directory {store.uri}: working copy {store.local} ({pulled} file(s) pulled)")
            write_record(cfg, command, run_dir=run_dir)
            try:
                yield
            finally:
                if store is not None:
                    print(f"[pbt] {store.push()} file(s) pushed to {store.uri}")

    return scope()


def _model(action: str) -> int:
    from pbt_ray.models import cache_root, embedded_cache_key, find_embedded_wheel, prepare_embedded_model

    if action == "prepare":
        print(prepare_embedded_model())
        return 0
    wheel = find_embedded_wheel()
    target = cache_root() / "models" / embedded_cache_key(wheel.version)
    print(json.dumps({"wheel_version": wheel.version, "gguf": str(wheel.gguf_path), "converted": str(target),
                      "ready": (target / "pbt_model.json").is_file()}, indent=2))
    return 0


def _serve(cfg, print_config: bool, source: str, overrides: list[str]) -> int:
    import yaml

    from pbt_ray.runtime import cluster_address, ray_cluster
    from pbt_ray.serving.app import deploy, serve_config_file, wait_ready

    if print_config:
        print(yaml.safe_dump(serve_config_file(source, overrides), sort_keys=False), end="")
        return 0
    local = cluster_address(cfg.ray) is None
    with ray_cluster(cfg):
        deploy(cfg)
        url = wait_ready(cfg)
        role = next(iter(cfg.serve.roles))
        print(f"\nOpenAI API at {url}  (models: {', '.join(m.id for m in cfg.serve.models)}; roles: {', '.join(cfg.serve.roles)})")
        print(f"Try: curl {url}/chat/completions -H 'Content-Type: application/json' "
              f"-d '{{\"model\": \"{role}\", \"messages\": [{{\"role\": \"user\", \"content\": \"What is the capital of France?\"}}]}}'")
        if not local:
            print(f"The app keeps running on the cluster; remove it with: serve delete {cfg.serve.app_name}")
            return 0
        print("Serving until Ctrl-C.")
        signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill` shuts down as cleanly as Ctrl-C
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("\n[pbt] shutting down the debater app")
    return 0


def _raise_interrupt(*_args) -> None:
    raise KeyboardInterrupt


def _debate(cfg, question: str | None, url: str | None) -> int:
    from pbt_ray.dialogue.view import render_text
    from pbt_ray.loop import check_endpoint, debate, debater_endpoint
    from pbt_ray.runtime import ray_cluster

    if url:
        cfg = cfg.model_copy(update={"grow": cfg.grow.model_copy(update={"endpoint": url})})
        check_endpoint(cfg, url.rstrip("/"))
        tree = debate(cfg, url.rstrip("/"), question)
    else:
        with ray_cluster(cfg), debater_endpoint(cfg) as endpoint:
            tree = debate(cfg, endpoint, question)
    print(render_text(tree, color=sys.stdout.isatty()))
    return 0 if tree.status == "complete" else 1


def _grow(cfg) -> int:
    from pbt_ray.dialogue.pipeline import grow_trees
    from pbt_ray.loop import debater_endpoint, format_grow_summary
    from pbt_ray.runtime import ray_cluster

    with ray_cluster(cfg), debater_endpoint(cfg) as url:
        summary = grow_trees(cfg, url)
    print(format_grow_summary(summary, cfg))
    return 0 if summary.failed == 0 else 1


def _view(cfg, args) -> int:
    from pbt_ray.dialogue.pipeline import read_trees
    from pbt_ray.dialogue.reference import read_reference_jsonl
    from pbt_ray.dialogue.tree import TreeSchemaError
    from pbt_ray.dialogue.view import render_html, render_text

    path = Path(args.path) if args.path else cfg.run_dir
    if not path.exists():
        print(f"pbt view: {path} does not exist; pass a run directory or a trees file", file=sys.stderr)
        return 2
    try:
        if path.suffix == ".jsonl":
            trees = []
            for line, item in read_reference_jsonl(path):
                if isinstance(item, TreeSchemaError):
                    print(f"pbt view: {path} {item}", file=sys.stderr)  # the error starts with "line N:"
                else:
                    trees.append(item)
        else:
            trees = list(read_trees(path, include_failed=args.failed))
    except TreeSchemaError as exc:
        where = "" if str(path) in str(exc) else f"{path}: "  # a file's own error names it already
        print(f"pbt view: {where}{exc}", file=sys.stderr)
        return 1
    if not trees:
        print(f"pbt view: no trees in {path}" + ("" if args.failed else " (--failed shows failed ones)"), file=sys.stderr)
        return 1
    if args.list:
        for t in trees:
            print(f"{t.tree_id}\t{t.status}\t{len(t.nodes)} turns\t{t.question}")
        return 0
    chosen = trees[0] if not args.tree else next((t for t in trees if args.tree in (t.tree_id, t.question_id)), None)
    if chosen is None:
        print(f"pbt view: no tree '{args.tree}' in {path}; `pbt view {path} --list` lists them", file=sys.stderr)
        return 1
    if args.html:
        Path(args.html).write_text(render_html(chosen))
        print(f"[pbt] wrote {args.html}")
    else:
        print(render_text(chosen, color=sys.stdout.isatty()))
    return 0


def _mine(cfg, args) -> int:
    from pbt_ray.preferences.mining import output_dir

    updates = {"input_format": args.input_format, "rule": args.mode, "balance": args.balance}
    updates = {k: v for k, v in updates.items() if v is not None}
    if args.stance_check:
        updates["stance_check"] = True
    cfg = cfg.model_copy(update={"mine": cfg.mine.model_copy(update=updates)})
    out = output_dir(cfg, args.trees, args.out)
    kwargs = {"trees": args.trees, "out": str(out), "use_ray": not args.no_ray}
    # The run the pairs belong to is the one the trees came from, never the config's default run.
    with _recorded(cfg, "mine", run_dir=out.parent):
        return _mine_into(cfg, args, kwargs)


def _mine_into(cfg, args, kwargs) -> int:
    from pbt_ray.loop import check_endpoint, debater_endpoint
    from pbt_ray.preferences.mining import mine
    from pbt_ray.runtime import ray_cluster

    if not cfg.mine.stance_check:
        if args.no_ray:
            mine(cfg, **kwargs)
        else:
            with ray_cluster(cfg):
                mine(cfg, **kwargs)
        return 0
    from pbt_ray.dialogue.pipeline import request_models
    from pbt_ray.preferences.stance import endpoint_stance_check
    from pbt_ray.serving.auth import client_key
    from pbt_ray.serving.chat_format import chat_formats

    def run_with(url: str) -> None:
        check = endpoint_stance_check(url, request_models(cfg)["extractor"], cfg.serve.request_timeout_s,
                                      formats=chat_formats(cfg), api_key=client_key(cfg.serve))
        mine(cfg, stance_check=check, **kwargs)

    if args.url:
        cfg = cfg.model_copy(update={"grow": cfg.grow.model_copy(update={"endpoint": args.url})})
        check_endpoint(cfg, args.url.rstrip("/"))
        with ray_cluster(cfg):
            run_with(args.url.rstrip("/"))
    else:
        with ray_cluster(cfg), debater_endpoint(cfg) as url:
            run_with(url)
    return 0


def _train(cfg, args) -> int:
    from pbt_ray.runtime import ray_cluster
    from pbt_ray.training.launch import prepare, train

    plan = prepare(cfg, args.pairs)  # every input check before Ray starts
    with ray_cluster(cfg):
        metrics = train(cfg, args.pairs, record_samples=args.record_samples, plan=plan)
    keys = ("global_step", "train_loss", "eval_loss", "eval_rewards/accuracies", "seconds")
    print("[pbt] " + ", ".join(f"{k} {metrics[k]:.4g}" if isinstance(metrics[k], float) else f"{k} {metrics[k]}"
                               for k in keys if k in metrics))
    return 0


def _plan_config(args) -> int:
    """`pbt plan-train -c CONFIG`: the config's DPO run and its served models (the trained one included)."""
    import math

    from pbt_ray.serving.memory import ServingMemoryError, check_serving_memory
    from pbt_ray.training.plan import Setting, cheapest, format_plan, model_spec, plan

    from pbt_ray.config import load_config

    cfg = load_config(args.config, args.overrides)
    tcfg = cfg.train
    ok = True
    if tcfg.use_gpu:
        per_node = min(tcfg.workers(), args.gpus_per_node)
        setting = Setting(gpus_per_node=per_node, nodes=math.ceil(tcfg.workers() / per_node), zero_stage=tcfg.zero_stage,
                          offload_optimizer=tcfg.offload_optimizer, offload_params=tcfg.offload_params,
                          lora_rank=tcfg.lora_r, lora_targets=tuple(tcfg.lora_targets), seq_len=tcfg.max_length,
                          micro_batch=tcfg.per_device_batch_size, gradient_checkpointing=tcfg.gradient_checkpointing,
                          gpu_memory_gib=args.gpu_memory, cpu_memory_gib=args.cpu_memory)
        try:
            result = plan(model_spec(tcfg.base_model), setting)
        except ValueError as exc:
            print(f"pbt plan-train: {exc}", file=sys.stderr)
            return 2
        print(f"training (DPO, {tcfg.global_batch()} pairs per step = {tcfg.workers()} workers x "
              f"{tcfg.per_device_batch_size} x {tcfg.accumulation()}):")
        print(format_plan(result, None if result.fits else cheapest(model_spec(tcfg.base_model), setting)))
        ok = result.fits
    else:
        print(f"training: {tcfg.workers()} CPU workers (no GPU plan)")
    print("serving (per replica; the trained model with its base's settings):")
    try:
        for line in check_serving_memory(cfg, with_trained=True):
            print("  " + line)
    except ServingMemoryError as exc:
        print(f"  {exc}")
        ok = False
    return 0 if ok else 1


def _plan_train(args) -> int:
    from pbt_ray.training.plan import Setting, cheapest, format_plan, model_spec, plan

    if args.config:
        return _plan_config(args)
    try:
        spec = model_spec(args.model)
        setting = Setting(gpus_per_node=args.gpus_per_node, nodes=args.nodes, zero_stage=args.zero,
                          offload_optimizer=args.offload_optimizer, offload_params=args.offload_params,
                          lora=not args.full, lora_rank=args.lora_rank,
                          lora_targets=tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()),
                          seq_len=args.seq_len, micro_batch=args.micro_batch,
                          gradient_checkpointing=not args.no_checkpointing, gpu_memory_gib=args.gpu_memory,
                          cpu_memory_gib=args.cpu_memory)
        result = plan(spec, setting)
    except ValueError as exc:
        print(f"pbt plan-train: {exc}", file=sys.stderr)
        return 2
    suggestion = None if result.fits else cheapest(spec, setting)
    if args.json:
        print(json.dumps({"plan": result.as_dict(), "suggestion": suggestion.as_dict() if suggestion else None}, indent=2))
    else:
        print(format_plan(result, suggestion))
    return 0 if result.fits else 1


def _eval(cfg, args) -> int:
    import asyncio

    from pbt_ray.evaluation.stage import EvalError, evaluate
    from pbt_ray.loop import debater_endpoint
    from pbt_ray.runtime import ray_cluster
    from pbt_ray.serving.auth import client_key
    from pbt_ray.serving.client import ChatClient

    def served(url: str) -> list[str]:
        async def ask() -> list[str]:
            client = ChatClient(url, timeout_s=30, api_key=client_key(cfg.serve))
            try:
                return await client.models()
            finally:
                await client.close()

        models = asyncio.run(ask())
        if cfg.eval.model and cfg.eval.model not in models:  # every item would fail with a 404, and exit 0
            raise EvalError(f"--model {cfg.eval.model}: not a model of {url} (it serves {', '.join(sorted(models))})")
        return models

    if args.url:
        url = args.url.rstrip("/")
        ours = "persuadee" in served(url)  # our app answers to role names; others to model ids
        summary = evaluate(cfg, args.suite, url, pairs=args.pairs, endpoint_is_ours=ours, label=args.label)
    else:
        with ray_cluster(cfg), debater_endpoint(cfg) as url:
            served(url)
            summary = evaluate(cfg, args.suite, url, pairs=args.pairs, label=args.label)
    if summary["items"] and summary["failed"] == summary["items"]:
        print(f"pbt: error: every one of the {summary['items']} {args.suite} items failed; the reasons are in "
              f"{cfg.run_dir / 'eval' / args.label / args.suite / 'results.jsonl'}", file=sys.stderr)
        return 1
    return 0


def _bench(cfg, args) -> int:
    from pbt_ray.serving.bench import run_serve_bench

    if args.bench == "train":
        from pbt_ray.runtime import ray_cluster
        from pbt_ray.training.bench import run_train_bench

        with ray_cluster(cfg):
            result = run_train_bench(cfg, args.pairs, args.steps, args.warmup, args.rounds)
        if args.output:
            Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
        return 0
    if args.bench == "extract":
        return _bench_extract(cfg, args)
    if args.bench == "grow":
        from pbt_ray.dialogue.bench import run_grow_bench, write_result

        result = run_grow_bench(cfg, args.questions, args.reference_questions, pipelines=not args.no_pipelines,
                                reference_engine_requests=args.reference_engine_requests)
        if args.output:
            write_result(result, args.output)
        return 0

    try:
        levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    except ValueError:
        print(f"pbt bench serve: --concurrency must be comma-separated integers, got {args.concurrency!r}", file=sys.stderr)
        return 2
    if args.load:
        from pbt_ray.serving.bench import run_load_bench

        result = run_load_bench(cfg, levels, args.max_tokens, url=args.url)
    else:
        result = run_serve_bench(cfg, levels, args.max_tokens, args.rounds)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _bench_extract(cfg, args) -> int:
    from pbt_ray.dialogue.extraction import MODES
    from pbt_ray.dialogue.extraction_bench import GoldError, load_gold, run_extract_bench
    from pbt_ray.serving.client import EndpointError

    modes = ([m.strip() for m in args.modes.split(",") if m.strip()] if args.modes
             else list(dict.fromkeys([cfg.extract.mode, "prompt"])))
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        print(f"pbt bench extract: --modes takes {', '.join(MODES)}, got {args.modes!r}", file=sys.stderr)
        return 2
    if args.concurrency < 1:
        print(f"pbt bench extract: --concurrency must be at least 1, got {args.concurrency}", file=sys.stderr)
        return 2
    try:
        load_gold(args.gold)  # a bad file fails before any engine starts
        result = run_extract_bench(cfg, args.gold, args.url, args.model, modes, args.concurrency)
    except (GoldError, EndpointError) as exc:
        print(f"pbt bench extract: {exc}", file=sys.stderr)
        return 2
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
        print(f"[pbt] results written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
