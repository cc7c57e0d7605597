"""Runs that survive being killed: a lock per output directory and append-only checkpoints.

Generation, model-based extraction and p(True) are the slow steps of a run, and a run on a big
model is killed (pre-empted, out of memory, Ctrl-C) long before it ends. Each of them therefore
appends its finished batches to a JSONL checkpoint that names what it belongs to (a digest of
the inputs and settings); a re-run reads the checkpoint back, skips the finished batches and
computes only the rest. Because batches are formed exactly as in an uninterrupted run, the
resumed results are identical, not just close. A killed process leaves at most a torn last
line, which is ignored.

`RunLock` stops two processes from writing into the same output directory: the second one
gets an error naming the holder (pid, host, command, start time). A lock left by a process
that no longer exists is taken over.

`TL_TRUTH_KILL_AT="<stage>:<n>"` makes the process kill itself (SIGKILL, no cleanup) right
after the n-th checkpointed batch of `stage` (`"<stage>:<n>@<rank>"`: only that rank of a
data-parallel run): the tests use it to kill runs at chosen points.

Data parallel (`tl_truth.parallel`), each rank has its own checkpoint files and only rank 0
holds the lock; see `JsonlCheckpoint` and `RunLock`.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tl_truth.parallel import Ranks, current_ranks, rank_file, rank_files

LOCK_FILE = ".tl_truth.lock"
KILL_ENV = "TL_TRUTH_KILL_AT"
_kill_counts: dict[str, int] = {}


def digest(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (what a checkpoint belongs to).

    >>> digest([1, 2], {"a": 1}) == digest([1, 2], {"a": 1}) != digest([2, 1], {"a": 1})
    True
    """
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


def maybe_die(stage: str) -> None:
    """Test hook: SIGKILL this process after the n-th call for `stage` if TL_TRUTH_KILL_AT says
    so (`"<stage>:<n>"`, or `"<stage>:<n>@<rank>"` for one rank of a data-parallel run)."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    spec, _, rank = spec.partition("@")
    if rank and rank != os.environ.get("RANK", "0"):
        return
    want, _, n = spec.partition(":")
    if want != stage:
        return
    _kill_counts[stage] = _kill_counts.get(stage, 0) + 1
    if _kill_counts[stage] >= int(n or 1):
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


class JsonlCheckpoint:
    """Append-only batches of results for one computation, identified by `key`.

    The first line is a header `{"checkpoint": key}`; each later line is one finished batch
    `{"batch": b, "items": [...]}`. Opening a file with another key raises ValueError naming the
    file (it belongs to other inputs or settings); a torn last line (the process was killed
    mid-write) is dropped.

    Data parallel (inside `tl_truth.parallel.sharded`): each rank appends to its own file
    (`gen.rank1.ckpt.jsonl` next to `gen.ckpt.jsonl`), `pending` deals the unfinished batches
    round-robin and `gather` swaps the results, so every rank ends with every batch. The files
    of every rank (and the untagged one of a single process) are read back on opening, so a
    killed run resumes with any number of processes.

    Args:
        path: the checkpoint file (created with its parent directories); None disables it
            (every method becomes a no-op), so callers need no special case.
        key: what the results belong to (see `digest`).
        stage: the name `TL_TRUTH_KILL_AT` refers to.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     ck = JsonlCheckpoint(f"{d}/gen.ckpt.jsonl", key="abc", stage="doc")
    ...     ck.append(0, [{"x": 1}]); ck.append(2, [{"x": 3}])
    ...     again = JsonlCheckpoint(f"{d}/gen.ckpt.jsonl", key="abc")
    ...     sorted(again.done()), again.pending(4)
    ([0, 2], [1, 3])
    """

    def __init__(self, path: str | Path | None, key: str, stage: str = "checkpoint"):
        self.ranks = current_ranks()
        self.base = Path(path) if path is not None else None
        self.path = self.base
        if self.base is not None and self.ranks.parallel:
            self.path = rank_file(self.base, self.ranks.rank)
        self.key = key
        self.stage = stage
        self._done: dict[int, list] = {}
        self._computed: set[int] = set()  # appended by this process (what `gather` sends)
        if self.path is None or self.base is None:
            return
        # every rank's file (any world size), and that of a single process: read only
        for other in [self.base, *rank_files(self.base)]:
            if other != self.path and other.exists():
                self._done.update(self._read(other, own=False))
        if self.path.exists():
            self._done.update(self._read(self.path, own=True))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._write_line({"checkpoint": key})  # new, or killed before its header

    def _read(self, path: Path, own: bool) -> dict[int, list]:
        lines = path.read_bytes().split(b"\n")
        done: dict[int, list] = {}
        for i, raw in enumerate(lines):
            if not raw.strip():
                continue
            try:
                d = json.loads(raw)
            except ValueError:
                if i >= len(lines) - 2:  # the torn last line of a killed writer
                    if own:  # another rank's file is its own to repair
                        path.write_bytes(b"".join(line + b"\n" for line in lines[:i]))
                    break
                raise ValueError(f"{path}:{i + 1}: corrupt checkpoint line") from None
            if i == 0:
                if d.get("checkpoint") != self.key:
                    raise ValueError(
                        f"{path} is a checkpoint of other inputs or settings "
                        f"({d.get('checkpoint')} != {self.key}); delete it to start again"
                    )
                continue
            done[int(d["batch"])] = d["items"]
        return done

    def _write_line(self, d: dict) -> None:
        assert self.path is not None
        with self.path.open("a") as f:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def done(self) -> dict[int, list]:
        """Finished batches: batch index -> its items."""
        return self._done

    def append(self, batch: int, items: list) -> None:
        """Record a finished batch (written and fsynced before this returns)."""
        self._done[batch] = items
        self._computed.add(batch)
        if self.path is None:
            return
        self._write_line({"batch": batch, "items": items})
        maybe_die(self.stage)

    def get_or_compute(self, batch: int, compute: Callable[[], Any]) -> Any:
        """The items of `batch`: from the file if it was finished before, else `compute()`d
        now and appended.

        >>> ck = JsonlCheckpoint(None, key="k")
        >>> ck.get_or_compute(0, lambda: [1, 2]), ck.get_or_compute(0, lambda: [9])
        ([1, 2], [1, 2])
        """
        if batch not in self._done:
            self.append(batch, compute())
        return self._done[batch]

    def pending(self, n: int) -> list[int]:
        """The batches of 0..n-1 this process computes: the unfinished ones, or its round-robin
        share of them when data parallel (a collective: the ranks first agree on what is done).

        >>> JsonlCheckpoint(None, key="k").pending(3)
        [0, 1, 2]
        """
        done = set(self._done)
        if self.ranks.parallel:  # done for all only if every rank read it back
            done = done.intersection(*map(set, self.ranks.gather(sorted(done))))
        return self.ranks.share([b for b in range(n) if b not in done])

    def gather(self, n: int) -> list:
        """The items of batches 0..n-1, in order; data parallel, the ranks first swap the
        batches they computed (a collective).

        Raises:
            RuntimeError: a batch is missing (it was never computed).

        >>> ck = JsonlCheckpoint(None, key="k")
        >>> ck.append(1, ["b"]); ck.append(0, ["a"])
        >>> ck.gather(2)
        [['a'], ['b']]
        """
        if self.ranks.parallel:
            mine = {str(b): self._done[b] for b in sorted(self._computed) if b < n}
            for got in self.ranks.gather(mine):
                self._done.update({int(b): items for b, items in got.items()})
        missing = [b for b in range(n) if b not in self._done]
        if missing:
            raise RuntimeError(f"{self.stage}: batches {missing[:5]} were never computed")
        return [self._done[b] for b in range(n)]


class RunLockedError(RuntimeError):
    """Another process holds the output directory (the message names it)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """Exclusive use of an output directory while a job writes into it (a context manager).

    Re-entrant within one process (nested jobs on the same directory share the lock). A second
    process gets a `RunLockedError` naming the holder. A lock whose process is gone (same host) is
    stale and taken over. In a data-parallel run rank 0 takes the lock and every rank learns
    whether it did before going on (a collective), so no rank writes into a directory another
    run holds.

    Args:
        out_dir: the directory to lock (created if missing).
        ranks: the processes of a data-parallel run (None: `tl_truth.parallel.current_ranks()`).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     with RunLock(d):
    ...         (Path(d) / LOCK_FILE).exists()
    True
    """

    _held: dict[tuple[Path, int], int] = {}

    def __init__(self, out_dir: str | Path, ranks: Ranks | None = None):
        self.dir = Path(out_dir)
        self.path = self.dir / LOCK_FILE
        self.ranks = ranks or current_ranks()

    def __enter__(self) -> RunLock:
        key = (self.path.resolve(), self.ranks.rank)
        if RunLock._held.get(key, 0) > 0:
            RunLock._held[key] += 1
            return self
        error = None
        if self.ranks.is_main:
            try:
                self._take()
            except RunLockedError as e:
                error = str(e)
        if self.ranks.parallel:
            self.ranks.agree(error, RunLockedError)
        elif error:
            raise RunLockedError(error)
        RunLock._held[key] = 1
        return self

    def _take(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(sys.argv)[:300],
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._holder()
                if holder and self._stale(holder):
                    self.path.unlink(missing_ok=True)
                    continue
                raise RunLockedError(
                    f"{self.dir} is in use by another tl_truth run "
                    f"(pid {holder.get('pid')} on {holder.get('host')}, started "
                    f"{holder.get('started')}: {holder.get('command')}). Wait for it, use "
                    f"another output directory, or delete {self.path} if that run is gone."
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return
        raise RuntimeError(f"could not take {self.path}")

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _stale(holder: dict) -> bool:
        return holder.get("host") == socket.gethostname() and not _alive(int(holder["pid"]))

    def __exit__(self, *exc: Any) -> None:
        key = (self.path.resolve(), self.ranks.rank)
        RunLock._held[key] -= 1
        if RunLock._held[key] == 0:
            del RunLock._held[key]
            if self.ranks.is_main:
                self.path.unlink(missing_ok=True)


def batches(n: int, size: int) -> Iterator[tuple[int, int, int]]:
    """(batch index, start, end) over `n` items in batches of `size`.

    >>> list(batches(5, 2))
    [(0, 0, 2), (1, 2, 4), (2, 4, 5)]
    """
    for b, start in enumerate(range(0, n, size)):
        yield b, start, min(n, start + size)
