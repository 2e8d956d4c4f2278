"""`pbt grow`: questions -> Ray Data -> an autoscaling pool of tree growers -> Parquet under the run dir.

Layout of ``<run_dir>/``::

    trees/part-<uuid>.parquet     finished trees, one row each (schema: dialogue/tree.py); never a duplicate
    failed/part-<uuid>.parquet    trees that failed, with the reason (kept for inspection, retried on rerun)
    grow_summary.json             counts, problems, throughput of the last run

Each grower writes the trees of a batch as one part file, atomically (temporary name, then rename), as
soon as the batch is done; so a killed run loses at most the batches in flight, and a rerun skips every
question id already in ``trees/``. An exclusive lock stops two runs writing one run dir at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pbt_ray.config import PBTConfig
from pbt_ray.dialogue.tree import Tree, TreeSchemaError, from_row, to_row, tree_schema
from pbt_ray.questions import Question, load_questions

TREES_DIR, FAILED_DIR = "trees", "failed"
# Ray Data's default number of concurrent calls of an async batch UDF per task (ray 2.60).
ASYNC_BATCHES_PER_GROWER = int(os.environ.get("RAY_DATA_DEFAULT_ASYNC_BATCH_UDF_MAX_CONCURRENCY", "4"))


class GrowError(RuntimeError):
    pass


# ---- storage ---------------------------------------------------------------------------------


def _part_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("part-*.parquet")) if directory.is_dir() else []


def finished_tree_ids(run_dir: Path) -> set[str]:
    """Ids of the trees already in ``trees/``. A part file that cannot be read stops the run with its name:
    skipping it would grow its trees again next to it, and deleting it would lose them."""
    import pyarrow.parquet as pq

    ids: set[str] = set()
    for part in _part_files(run_dir / TREES_DIR):
        try:
            ids.update(pq.read_table(part, columns=["tree_id"]).column("tree_id").to_pylist())
        except Exception as exc:  # noqa: BLE001 - truncated, not Parquet, no tree_id column
            raise GrowError(f"{part}: {_unreadable(exc)}; move it out of {part.parent} and its trees are grown "
                            "again (nothing else is touched)") from None
    return ids


def _unreadable(exc: Exception) -> str:
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return f"not a readable trees Parquet file ({first[:200]})"


def check_grow_inputs(cfg: PBTConfig) -> None:
    """What `pbt grow` reads, checked before Ray starts and before the command is recorded: the question source
    (a hub dataset is left to the grow itself, which downloads it once) and the part files a rerun resumes from."""
    if not cfg.grow.questions.startswith("hf:"):
        load_questions(cfg.grow.questions, cfg.grow.limit, cfg.grow.on_bad_row, cfg.grow.question_ids)
    finished_tree_ids(cfg.run_dir)


def part_name(trees: list[Tree]) -> str:
    """A batch's part file name, from the ids of ALL its trees (finished or not): if a grower dies after writing
    but before Ray Data records the batch as done, the retried batch writes the same name and replaces the file,
    even when a different subset of its trees finishes this time (naming by the finished ones alone let a retry
    write tree X into a second file)."""
    return "part-" + hashlib.sha1("\n".join(sorted(t.tree_id for t in trees)).encode()).hexdigest()[:16] + ".parquet"


def write_trees(trees: list[Tree], run_dir: Path) -> None:
    """Finished trees to trees/, failed ones to failed/: one atomically renamed part file each."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = part_name(trees)
    for subdir, group in ((TREES_DIR, [t for t in trees if t.status == "complete"]),
                          (FAILED_DIR, [t for t in trees if t.status != "complete"])):
        if not group:
            (run_dir / subdir / name).unlink(missing_ok=True)  # a retry that finished them all: no stale copy
            continue
        directory = run_dir / subdir
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{name}.tmp"
        pq.write_table(pa.Table.from_pylist([to_row(t) for t in group], schema=tree_schema()), tmp)
        os.replace(tmp, directory / name)


def read_trees(path: Path, include_failed: bool = False) -> Iterator[Tree]:
    """Trees of a run dir (its trees/, and failed/ if asked) or of one Parquet file."""
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_file():
        files = [path]
    else:
        files = _part_files(path / TREES_DIR) + (_part_files(path / FAILED_DIR) if include_failed else [])
    seen: set[str] = set()
    for part in files:  # finished trees first: a tree that also failed in an earlier attempt is read once
        try:
            rows = pq.read_table(part).to_pylist()
        except Exception as exc:  # noqa: BLE001 - any unreadable file: its name and what is wrong, no traceback
            raise TreeSchemaError(f"{part}: {_unreadable(exc)}") from None
        for row in rows:
            if row.get("tree_id") in seen:
                continue
            seen.add(row.get("tree_id"))
            yield from_row(row)  # a row of another schema: TreeSchemaError naming the tree


@contextlib.contextmanager
def _exclusive(run_dir: Path) -> Iterator[None]:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".grow.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GrowError(f"Another `pbt grow` is writing to {run_dir}; wait for it or use another run name.") from None
        yield


# ---- the grower actor ------------------------------------------------------------------------


class TreeGrower:
    """A Ray Data actor growing the trees of each batch against the endpoint, and writing them.

    ``__call__`` is a coroutine, so Ray Data runs several batches of one grower concurrently on its event
    loop (RAY_DATA_DEFAULT_ASYNC_BATCH_UDF_MAX_CONCURRENCY, 4 by default): their turns all share one
    client and one in-flight bound, while each batch still lands as its own part file.
    """

    def __init__(self, transport: dict, grow_cfg: dict, models: dict[str, str], run_dir: str, timeout_s: float,
                 extract_mode: str = "auto", retry_window_s: float = 180.0):
        from pbt_ray.config import GrowConfig

        self.transport, self.models, self.run_dir, self.timeout_s = transport, models, Path(run_dir), timeout_s
        self.extract_mode, self.retry_window_s = extract_mode, retry_window_s
        self.cfg = GrowConfig.model_validate(grow_cfg)
        self._engine = None

    async def __call__(self, batch: dict) -> dict:
        questions = [Question.model_validate_json(text) for text in batch["question"]]
        trees = await self._engine_for_loop().grow(questions)
        await asyncio.to_thread(write_trees, trees, self.run_dir)
        return {
            "tree_id": [t.tree_id for t in trees],
            "status": [t.status for t in trees],
            "error": [t.error or "" for t in trees],
            "turns": [len(t.nodes) for t in trees],
            "generated_tokens": [t.generated_tokens for t in trees],
            "reads": [json.dumps(reading_counts(t)) for t in trees],
        }

    def _engine_for_loop(self):
        from pbt_ray.dialogue.growth import GrowthEngine

        if self._engine is None:  # created inside the actor's event loop, reused by every batch
            self._engine = GrowthEngine(make_client(self.transport, self.timeout_s), self.cfg, self.models,
                                        self.extract_mode, retry_window_s=self.retry_window_s)
        return self._engine


def reading_counts(tree: Tree) -> dict[str, int]:
    """What the answer instrument read in a tree's turns: outcomes (``answer``, ``none``, ...) and the step
    that read each (``read_by:rule``, ``read_by:constrained``, ...)."""
    counts: dict[str, int] = {}
    for node in tree.nodes:
        for key in (node.outcome, f"read_by:{node.read_by or 'unknown'}"):
            counts[key] = counts.get(key, 0) + 1
    return counts


def transport_for(cfg: PBTConfig, url: str) -> dict:
    """How growers reach the models (see ``GrowConfig.client``), as plain data for the actors. ``formats``:
    how each model's chat template wants the messages, decided here on the driver once (a probe loads a
    tokenizer; the actors then need none)."""
    from pbt_ray.serving.chat_format import chat_formats

    formats = chat_formats(cfg)
    if cfg.grow.client == "handle" or (cfg.grow.client == "auto" and not cfg.grow.endpoint):
        return {"kind": "handle", "app_name": cfg.serve.app_name, "aliases": dict(cfg.serve.roles),
                "served": [m.id for m in cfg.serve.models], "formats": formats}
    # Where the growers find the endpoint's bearer token, not the token: transports travel in Ray task specs.
    return {"kind": "http", "url": url, "formats": formats,
            "api_key_env": cfg.serve.api_key_env, "api_key_file": cfg.serve.api_key_file}


def make_client(transport: dict, timeout_s: float):
    from pbt_ray.serving.client import ChatClient, HandleChatClient

    if transport["kind"] == "handle":
        return HandleChatClient(transport["app_name"], transport["aliases"], transport["served"], transport.get("formats"),
                                timeout_s=timeout_s)
    # The growth engine retries itself (grow.retries, serve.retry_window_s), so the SDK's own retries are off.
    from pbt_ray.serving.auth import DEFAULT_API_KEY_ENV, read_token

    api_key = read_token(transport.get("api_key_env", DEFAULT_API_KEY_ENV), transport.get("api_key_file"))
    return ChatClient(transport["url"], timeout_s=timeout_s, max_retries=0, formats=transport.get("formats"),
                      api_key=api_key)


# ---- the driver ------------------------------------------------------------------------------


@dataclass
class GrowSummary:
    questions: int = 0
    already_done: int = 0
    grown: int = 0
    failed: int = 0
    turns: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    reads: dict[str, int] = field(default_factory=dict)  # outcomes and read_by counts of the grown turns
    none_rate_ci95: list[float] | None = None  # bootstrap over trees (a tree's turns are not independent)

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds else 0.0

    @property
    def none_rate(self) -> float | None:
        """Share of grown turns in which the instrument read no answer (NONE)."""
        return self.reads.get("none", 0) / self.turns if self.turns else None


def request_models(cfg: PBTConfig) -> dict[str, str]:
    """Model ids the growers send: role aliases on our app, the served ids on any other endpoint."""
    persuader = cfg.grow.persuader
    roles = {persuader: "persuader", ("B" if persuader == "A" else "A"): "persuadee", "extractor": "extractor"}
    if cfg.grow.endpoint:
        return {who: cfg.serve.roles[role] for who, role in roles.items()}
    return roles


def grow_trees(cfg: PBTConfig, endpoint: str, log=print, progress: bool = True) -> GrowSummary:
    import ray
    from tqdm.auto import tqdm

    g = cfg.grow
    run_dir = cfg.run_dir
    loaded = load_questions(g.questions, g.limit, g.on_bad_row, g.question_ids)
    summary = GrowSummary(questions=len(loaded.questions), problems=loaded.problems)
    for problem in loaded.problems[:20]:
        log(f"[pbt] skipped a question: {problem}")
    with _exclusive(run_dir):
        done = finished_tree_ids(run_dir)
        todo = [q for q in loaded.questions if q.id not in done]
        summary.already_done = len(loaded.questions) - len(todo)
        if summary.already_done:
            log(f"[pbt] resuming: {summary.already_done} of {len(loaded.questions)} trees already in {run_dir / TREES_DIR}")
        start = time.monotonic()
        if todo and not g.endpoint:
            from pbt_ray.resources import grow_sizing

            size = grow_sizing(cfg)
            if size["growers_offer"] < size["app_capacity"]:
                log(f"[pbt] note: growers keep at most {size['growers_offer']} requests in flight (grow.max_growers x "
                    f"grow.max_in_flight) but the app takes {size['app_capacity']} at full scale; "
                    f"grow.max_growers={size['growers_needed']} would saturate it (docs/clusters.md)")
        if todo:
            ctx = ray.data.DataContext.get_current()
            if not cfg.ray.log_to_driver:
                # One progress bar, ours, counting trees; Ray Data's execution chatter stays in its log files.
                logging.getLogger("ray.data").setLevel(logging.ERROR)
                ctx.enable_progress_bars = False
            # Blocks of a few batches each: a grower runs a block's batches concurrently (see TreeGrower),
            # and there are enough blocks to keep every grower of the pool busy.
            per_block = g.batch_size * ASYNC_BATCHES_PER_GROWER
            blocks = max(math.ceil(len(todo) / per_block), min(g.max_growers, math.ceil(len(todo) / g.batch_size)))
            ds = ray.data.from_items([{"question": q.model_dump_json()} for q in todo], override_num_blocks=blocks)
            grown = ds.map_batches(
                TreeGrower,
                fn_constructor_kwargs={"transport": transport_for(cfg, endpoint), "grow_cfg": g.model_dump(),
                                       "models": request_models(cfg),
                                       "run_dir": str(run_dir.resolve()), "timeout_s": cfg.serve.request_timeout_s,
                                       "extract_mode": cfg.extract.mode, "retry_window_s": cfg.serve.retry_window_s},
                batch_size=g.batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(min_size=g.min_growers, max_size=g.max_growers),
                num_cpus=g.cpus_per_grower,
            )
            none_per_tree: list[tuple[int, int]] = []  # (NONE turns, turns) of each grown tree
            with tqdm(total=len(todo), unit="tree", desc="growing trees", disable=not progress) as bar:
                for batch in grown.iter_batches(batch_size=None, batch_format="numpy"):
                    for tree_id, status, error, turns, tokens, reads in zip(
                            batch["tree_id"], batch["status"], batch["error"], batch["turns"], batch["generated_tokens"],
                            batch["reads"]):
                        summary.turns += int(turns)
                        counts = json.loads(str(reads))
                        for key, count in counts.items():
                            summary.reads[key] = summary.reads.get(key, 0) + count
                        none_per_tree.append((counts.get("none", 0), int(turns)))
                        summary.generated_tokens += int(tokens)
                        if status == "complete":
                            summary.grown += 1
                        else:
                            summary.failed += 1
                            summary.failures.append(f"{tree_id}: {error}")
                        bar.update(1)
                    bar.set_postfix(tok_s=f"{summary.generated_tokens / max(time.monotonic() - start, 1e-9):.0f}")
            from pbt_ray.stats import cluster_rate

            summary.none_rate_ci95 = cluster_rate(*zip(*none_per_tree))["ci95"] if none_per_tree else None
        summary.seconds = round(time.monotonic() - start, 2)
        (run_dir / "grow_summary.json").write_text(json.dumps(
            asdict(summary) | {"tokens_per_s": summary.tokens_per_s, "none_rate": summary.none_rate}, indent=2) + "\n")
    return summary
