"""Data-parallel runs: one `tl-truth run` over N processes, with the results of one process.

    torchrun --standalone --nproc-per-node 4 -m tl_truth.cli run --dataset capitals --out runs/x
    tl-truth run --nproc 4 --dataset capitals --out runs/x       # the same, launched for you

Every process (rank) loads the model and reads the same questions. The slow steps work in the
batches a single process would form, and each rank does a share of them:

- generation, model-based extraction and p(True) go through `JsonlCheckpoint`: the batches not
  yet finished are dealt round-robin to the ranks, each rank appends its finished batches to
  its own checkpoint file (`generate.rank1.ckpt.jsonl`, ...), and at the end of the step the
  ranks exchange their results (a collective), so every rank holds every batch, in order;
- capture deals the store's shards (`shard_00000.safetensors`, ...) the same way; rank 0
  alone writes `meta.json`, and a barrier ends the step.

Because a batch holds exactly the rows it holds in one process (same prompts, same padding),
greedy decoding gives the same tokens and capture the same activations: generations.jsonl and
the store are those of one process, byte for byte, when every rank runs with the same torch
thread count as that process (CPU matrix products may sum in another order with another
thread count; on SmolLM2, 48 questions, 2 x 1, 1 x 2 and 1 x 1 threads gave byte-identical
generations: `benchmarks/bench_data_parallel.py`). Rank 0 then writes generations.jsonl, fits
the probe grid and the baselines and writes the report, exactly as one process does; the
other ranks exit. Sampling (temperature > 0) is refused: one random stream runs through the
batches of one process, which shards cannot reproduce.

Killed, nothing is lost: each rank's checkpoint holds its finished batches and each shard is
written atomically; torchrun stops the other ranks when one dies. A re-run resumes with any
number of processes (one included), since the checkpoints of every rank are read back and the
unfinished batches dealt again. Only rank 0 takes the run lock on `--out`; the other ranks
wait for its answer before writing anything.

Threads: `--nproc N` gives each rank `--threads` (default: cores // N, at least 1) and sets
OMP_NUM_THREADS to match. Under a torchrun you start yourself, pass `--threads` (torchrun sets
OMP_NUM_THREADS=1 when it is unset) and not `--nproc` (torchrun's own parser rejects it).

Scaling to N GPUs on one node: `torchrun --standalone --nproc-per-node 8 -m tl_truth.cli run
... --device cuda` (or no `--device`, with CUDA present) puts rank r on `cuda:LOCAL_RANK`, and
NCCL carries the exchanges. Each GPU holds a whole model, so this is for models that fit one
GPU (with `--dtype bfloat16` if need be); a model bigger than one GPU is split with
`--device-map` inside one process instead. Generation, extraction, capture and p(True) divide
by N; what does not is the model load (every rank, at once), rank 0's probe grid and
baselines, and the granularity (B batches keep at most B ranks busy: lower `--batch-size`
for many GPUs and few questions; capture is dealt by shards of 128 answers). Not yet run on GPUs (none was lent to this
work); the CPU path (gloo) is what `tests/test_parallel.py` runs.

Beyond one node (not built): the ranks exchange only small JSON results through
`torch.distributed`, but they write shards and checkpoints into `--out`, so a multi-node
torchrun rendezvous (`torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d
--rdzv-endpoint HOST:29400 ...`) needs `--out` on a filesystem every node sees, and the lock
is only as good as that filesystem's O_EXCL. Past that, the decode loop is the limit:
TransformerLens 4.3's `RemoteBridge.boot_vllm` (vLLM workers: paged attention, continuous
batching, tensor / pipeline parallel; activations captured by hooks inside the workers) or a
Ray pool of model replicas fed from a shared question queue would do generation, with capture
and probing reading their outputs as they read generations.jsonl today.

`torch.distributed` is initialised only by the `tl-truth` command in a process torchrun
started (`start`); importing this module changes nothing. Library callers pass `Ranks` to
`tl_truth.studies.run_all` themselves.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

__all__ = [
    "SINGLE",
    "Ranks",
    "current_ranks",
    "default_threads",
    "launch",
    "rank_device",
    "rank_options",
    "rank_file",
    "sharded",
    "start",
    "stop",
    "torchrun_command",
    "under_torchrun",
    "worker_ranks",
]

NPROC_HELP = (
    "data parallel: N processes under torchrun, each on a share of the questions (same results "
    "as one); on CPU each gets --threads, by default cores // N"
)

# How long a rank waits for the others at an exchange: a resumed run can leave one rank hours
# of batches more than another, and the default (30 min) would kill it.
EXCHANGE_TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes of a data-parallel run.

    Args:
        rank: this process's index, 0 to `world - 1` (rank 0 writes the report).
        world: the number of processes.
        local_rank: its index on this node (its GPU: `cuda:{local_rank}`).
        exchange: how the ranks swap JSON texts, `(rank, text) -> every rank's text`;
            None: `torch.distributed.all_gather_object` on the default process group
            (`tl_truth.testing.thread_ranks`: between threads, for tests).

    >>> SINGLE.is_main, SINGLE.parallel, SINGLE.share([0, 1, 2])
    (True, False, [0, 1, 2])
    >>> Ranks(1, 2).share([0, 1, 2, 5])
    [1, 5]
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    exchange: Callable[[int, str], list[str]] | None = field(
        default=None, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} is not in 0..{self.world - 1}")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes what a single process writes."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        """More than one process."""
        return self.world > 1

    def share(self, items: Sequence[Any]) -> list[Any]:
        """This rank's items: every `world`-th, starting at `rank` (round-robin)."""
        return list(items[self.rank :: self.world])

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj` (JSON-serialisable), in rank order; a collective: all ranks call it.

        >>> SINGLE.gather({"a": 1})
        [{'a': 1}]
        """
        if not self.parallel:
            return [obj]
        text = json.dumps(obj)
        if self.exchange is not None:
            texts = self.exchange(self.rank, text)
        else:
            import torch.distributed as dist

            texts = [None] * self.world
            dist.all_gather_object(texts, text)
        return [json.loads(t) for t in texts]

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        self.gather(None)

    def agree(self, error: str | None, kind: type[Exception] = ValueError) -> None:
        """Raise `kind` on every rank when any rank's `error` is not None (a collective).

        >>> SINGLE.agree(None)
        >>> SINGLE.agree("no")
        Traceback (most recent call last):
        ...
        ValueError: no
        """
        errors = [e for e in self.gather(error) if e is not None]
        if errors:
            raise kind(errors[0])


SINGLE = Ranks()
_CURRENT: ContextVar[Ranks] = ContextVar("tl_truth_ranks", default=SINGLE)


def current_ranks() -> Ranks:
    """The ranks the batch loops share their work with (`SINGLE` outside `sharded`).

    >>> current_ranks() is SINGLE
    True
    """
    return _CURRENT.get()


@contextmanager
def sharded(ranks: Ranks | None) -> Iterator[Ranks]:
    """Inside this block, checkpointed batch loops and capture do only this rank's share.

    >>> with sharded(Ranks(0, 1)) as r:
    ...     current_ranks() == r
    True
    """
    token = _CURRENT.set(ranks or SINGLE)
    try:
        yield ranks or SINGLE
    finally:
        _CURRENT.reset(token)


def rank_file(path: str | Path, rank: int) -> Path:
    """The checkpoint file of `rank` next to `path` (rank-tagged before `.ckpt.jsonl`).

    >>> rank_file("out/generate.ckpt.jsonl", 1).name, rank_file("out/x.jsonl", 0).name
    ('generate.rank1.ckpt.jsonl', 'x.rank0.jsonl')
    """
    path = Path(path)
    for tail in (".ckpt.jsonl", path.suffix):
        if tail and path.name.endswith(tail):
            return path.with_name(f"{path.name.removesuffix(tail)}.rank{rank}{tail}")
    return path.with_name(f"{path.name}.rank{rank}")


def rank_files(path: str | Path) -> list[Path]:
    """Every rank-tagged sibling of `path` that exists (any world size), by rank.

    >>> rank_files("no/such/dir/generate.ckpt.jsonl")
    []
    """
    path = Path(path)
    head, tail = rank_file(path, 0).name.rsplit(".rank0", 1)
    tagged = re.compile(re.escape(head) + r"\.rank(\d+)" + re.escape(tail) + "$")
    found = [(m, p) for p in path.parent.glob(f"{head}.rank*{tail}") if (m := tagged.match(p.name))]
    return [p for _, p in sorted(found, key=lambda mp: int(mp[0].group(1)))]


# ---------------------------------------------------------------------------------------------
# Processes: torchrun's environment, the process group, the launcher


def under_torchrun(env: dict | None = None) -> bool:
    """Whether this process is one of several that torchrun started (WORLD_SIZE > 1).

    >>> under_torchrun({"WORLD_SIZE": "2", "RANK": "1"}), under_torchrun({})
    (True, False)
    """
    env = os.environ if env is None else env
    return int(env.get("WORLD_SIZE", "1")) > 1


def _from_env(env: dict) -> Ranks:
    return Ranks(
        int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0"))
    )


def start(device: str | None = None) -> Ranks:
    """Join the process group torchrun set up (NCCL for CUDA, else gloo): the CLI calls this.

    Args:
        device: the run's `--device` (None: CUDA when available).

    Returns:
        This process's `Ranks` (`SINGLE` when torchrun started only one process).
    """
    ranks = _from_env(os.environ)
    if not ranks.parallel:
        return SINGLE
    import torch
    import torch.distributed as dist

    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if cuda:
        torch.cuda.set_device(ranks.local_rank)  # where NCCL's object exchanges live
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=EXCHANGE_TIMEOUT)
    return ranks


def worker_ranks(command: str, device: str | None = None) -> Ranks:
    """The `tl-truth` command's ranks: `SINGLE` outside torchrun; under it, `run` joins the
    process group (`start`) and any other command is refused (ValueError).

    >>> worker_ranks("generate") is SINGLE  # not under torchrun here
    True
    """
    if not under_torchrun():
        return SINGLE
    if command != "run":
        raise ValueError(
            f"`tl-truth {command}` runs in one process; only `tl-truth run` is data parallel "
            "(torchrun or --nproc)"
        )
    return start(device)


def rank_options(options: Any, ranks: Ranks) -> Any:
    """`RunOptions` for this rank: its own GPU (`rank_device`), progress bars on rank 0 only.

    >>> from tl_truth.config import RunOptions
    >>> o = rank_options(RunOptions(device="cuda"), Ranks(1, 2, 1))
    >>> o.device, o.quiet
    ('cuda:1', True)
    """
    if not ranks.parallel:
        return options
    quiet = options.quiet or not ranks.is_main
    return replace(options, device=rank_device(options.device, ranks), quiet=quiet)


def stop() -> None:
    """Leave the process group `start` joined (a no-op when none)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: str | None, ranks: Ranks) -> str | None:
    """The device of this rank: a bare "cuda" (or automatic, with CUDA) becomes
    `cuda:{local_rank}`; anything else is kept.

    >>> rank_device("cuda", Ranks(3, 8, 3)), rank_device("cpu", Ranks(3, 8, 3))
    ('cuda:3', 'cpu')
    """
    if not ranks.parallel:
        return device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else None
    return f"cuda:{ranks.local_rank}" if device == "cuda" else device


def default_threads(nproc: int) -> int:
    """Torch threads per rank when `--nproc` launches on CPU: the cores shared out, at least 1.

    >>> default_threads(10**6)
    1
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // nproc)


def torchrun_command(argv: Sequence[str], nproc: int) -> list[str]:
    """The torchrun command `tl-truth ... --nproc N` runs: N workers of `tl_truth.cli argv`.

    `--nproc` is left out of the workers' arguments (torchrun's own parser would take it
    for an ambiguous `--nproc-per-node`).

    >>> cmd = torchrun_command(["run", "--nproc", "2", "--limit", "8", "--nproc=2"], 2)
    >>> cmd[1:6], cmd[-3:]
    (['-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '2'], ['run', '--limit', '8'])
    """
    argv, kept = list(argv), []
    while argv:
        a = argv.pop(0)
        if a == "--nproc":
            argv = argv[1:]
        elif not a.startswith("--nproc="):
            kept.append(a)
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a rendezvous on this host, on a free port
        "--nproc-per-node",
        str(nproc),
        "-m",
        "tl_truth.cli",
        *kept,
    ]


def launch(argv: Sequence[str], nproc: int, threads: int | None = None) -> int:
    """Run `tl_truth.cli argv` as `nproc` torchrun workers of `threads` torch threads each.

    Args:
        argv: the `tl-truth` arguments (`--nproc` is left out of the workers').
        nproc: the number of processes.
        threads: torch threads per worker (its `--threads`, and OMP_NUM_THREADS); None:
            `default_threads(nproc)`.

    Returns:
        torchrun's exit status (non-zero when any worker failed).
    """
    threads = threads or default_threads(nproc)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.run(
        torchrun_command([*argv, "--threads", str(threads)], nproc), env=env
    ).returncode
