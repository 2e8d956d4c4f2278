"""Run directories behind a URI (``runs_dir: s3://bucket/runs``, ``gs://…``, any fsspec protocol; ``memory://``
in tests), through fsspec.

The stages read and write files in a local working copy of the run directory (``PBTConfig.run_dir``:
``$PBT_STAGING_DIR`` or ``~/.cache/pbt-ray/runs``, then the URI's name, then the run name). A command that writes
takes the run's lock (``pbt_ray/record.py``), pulls the URI's copy first, and pushes what changed after every
stage and when it ends, so a crash loses at most the stage in progress and a rerun elsewhere resumes from the
URI. A local ``runs_dir`` (or a shared mount) is used in place and has no store.

Only the driver holds the working copy: on a cluster of several nodes, stages running elsewhere (growers, Train
workers, replicas loading the trained model) could not see it, so a URI ``runs_dir`` is refused there (use a
shared mount, ``shared_runs_dir: true``); ``train.storage_path`` takes a URI on any cluster (Ray Train writes it).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

SKIP = re.compile(r"(^|/)(\.pbt\.lock|\.grow\.lock|\.[^/]*\.tmp|__pycache__)(/|$)")  # never leaves the node


def is_uri(runs_dir: str) -> bool:
    return "://" in str(runs_dir)


def staging_dir(runs_dir: str) -> Path:
    """The local working copy of a URI runs_dir: readable, and one per URI."""
    root = Path(os.environ.get("PBT_STAGING_DIR") or Path.home() / ".cache" / "pbt-ray" / "runs")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(runs_dir)).strip("-")[:80]
    return root / f"{slug}-{hashlib.sha256(str(runs_dir).encode()).hexdigest()[:8]}"


class StoreError(ValueError):
    """The URI cannot be reached or written; the message names it."""


class RunStore:
    """A run directory at ``uri`` mirrored by the local directory ``local``."""

    def __init__(self, uri: str, local: Path):
        import fsspec

        self.uri, self.local = uri.rstrip("/"), Path(local)
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.uri)
        except (ImportError, ValueError) as exc:  # an unknown protocol, or its package (s3fs, gcsfs) missing
            raise StoreError(f"runs_dir {uri}: {exc}") from None

    @classmethod
    def of(cls, cfg) -> "RunStore | None":
        return cls(f"{cfg.runs_dir.rstrip('/')}/{cfg.name}", cfg.run_dir) if is_uri(cfg.runs_dir) else None

    def _remote(self) -> dict[str, int]:
        """{relative path: size} of the files under the URI."""
        try:
            found = self.fs.find(self.root, detail=True) if self.fs.exists(self.root) else {}
        except OSError as exc:
            raise StoreError(f"runs_dir {self.uri}: cannot list it ({exc})") from None
        prefix = self.root.rstrip("/") + "/"
        return {path[len(prefix):]: int(info.get("size") or 0) for path, info in found.items()
                if info.get("type") != "directory" and path.startswith(prefix)}

    def _local(self) -> dict[str, int]:
        if not self.local.is_dir():
            return {}
        return {p.relative_to(self.local).as_posix(): p.stat().st_size for p in self.local.rglob("*") if p.is_file()}

    def pull(self) -> int:
        """Copy the files the URI has and the working copy lacks (or holds in another size); returns how many."""
        local, n = self._local(), 0
        for rel, size in self._remote().items():
            if SKIP.search(rel) or local.get(rel) == size:
                continue
            target = self.local / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.pull.tmp")
            self.fs.get_file(f"{self.root}/{rel}", str(tmp))
            os.replace(tmp, target)
            n += 1
        self.local.mkdir(parents=True, exist_ok=True)
        (self.local / ".pbt-pushed").touch()  # what was just pulled is in sync: the next push skips it
        return n

    def push(self) -> int:
        """Copy the working copy's new and changed files to the URI (same name, another size, or newer than the
        last push); returns how many. Locks and temporary files stay local."""
        remote, n = self._remote(), 0
        marker = self.local / ".pbt-pushed"
        since = marker.stat().st_mtime if marker.is_file() else 0.0
        for rel, size in sorted(self._local().items()):
            path = self.local / rel
            if SKIP.search(rel) or rel == ".pbt-pushed":
                continue
            if remote.get(rel) == size and path.stat().st_mtime <= since:
                continue
            try:
                self.fs.makedirs(f"{self.root}/{rel}".rsplit("/", 1)[0], exist_ok=True)
                self.fs.put_file(str(path), f"{self.root}/{rel}")
            except OSError as exc:
                raise StoreError(f"runs_dir {self.uri}: cannot write {rel} ({exc}); the working copy keeps it in "
                                 f"{self.local}") from None
            n += 1
        self.local.mkdir(parents=True, exist_ok=True)
        marker.touch()
        return n


def push_run(cfg, log=None) -> None:
    """After a stage: the run's new files to its URI (nothing to do for a local runs_dir)."""
    store = RunStore.of(cfg)
    if store is not None:
        n = store.push()
        if log and n:
            log(f"[pbt] {n} file(s) pushed to {store.uri}")
