"""`ActivationStore`: reading the activations `capture` wrote to disk.

A store is a directory: `meta.json` (model identity, hooks, positions, dtype, one entry per
example with its id, task, split and label) and `shard_*.safetensors`. Opening and reading a
store needs no model, so this side lives apart from the capture code in
`tl_truth.probing.activations` (which re-exports it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tl_truth.models import ModelInfo
from tl_truth.result_io import read_json_file, read_tensors

META_FILE = "meta.json"
STORE_VERSION = 1


def _layer_of(hook: str) -> int:
    parts = hook.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" else -1


@dataclass
class ActivationStore:
    """An on-disk activation store: `meta.json` + `shard_*.safetensors`.

    Each shard holds `acts` [n, n_hooks, n_positions, d_model], `valid` [n, n_positions] and
    `rows` [n] (indices into the example list of the metadata). Written by `capture`, opened
    with `ActivationStore.open(path)`; `fit_probe_grid(store)` fits a probe per cell.

    Args:
        path: the store's directory.
        meta: the parsed `meta.json`: model identity, hooks, positions, dtype, d_model, one
            entry per example (id, task, split, correct, ...) and the shard list.

    >>> import tempfile
    >>> from tl_truth.probing import capture
    >>> from tl_truth.testing import tiny_model
    >>> records = [{"id": str(i), "task": "demo", "split": "train" if i < 6 else "test",
    ...             "correct": i % 2 == 0, "prompt_token_ids": [1, 20 + i, 30, 40],
    ...             "answer_token_ids": [50 + i, 60]} for i in range(8)]
    >>> with tempfile.TemporaryDirectory() as d:
    ...     store = capture(tiny_model("llama"), records, d,
    ...                     positions=["last_prompt", "first_answer"], progress=False)
    ...     acts, valid = store.load()
    ...     x, rows = store.cell("blocks.1.hook_resid_post", "first_answer")
    ...     X, available = store.cell_by_key("blocks.1.hook_resid_post", "first_answer",
    ...                                      [("demo", "3"), ("demo", "no such id")])
    ...     reopened = ActivationStore.open(d)
    >>> len(store), store.hooks, store.positions
    (8, ['blocks.0.hook_resid_post', 'blocks.1.hook_resid_post'], ['last_prompt', 'first_answer'])
    >>> acts.shape, bool(valid.all()), x.shape, rows.tolist() == list(range(8))
    (torch.Size([8, 2, 2, 32]), True, torch.Size([8, 32]), True)
    >>> store.labels.tolist(), int(store.split_mask("test").sum()), store.layers
    ([1, 0, 1, 0, 1, 0, 1, 0], 2, [0, 1])
    >>> store.model.d_model, reopened.meta == store.meta, X.shape, available
    (32, True, torch.Size([2, 32]), [True, False])
    """

    path: Path
    meta: dict

    @classmethod
    def open(cls, path: str | Path) -> ActivationStore:
        """Open the store written by `capture` at `path` (reads only `meta.json`).

        Args:
            path: the store's directory.

        Returns:
            The store; shards are read by `load` / `cell`.

        Raises:
            FileNotFoundError: no `meta.json` there.

        >>> ActivationStore.open("no/such/store")
        Traceback (most recent call last):
        ...
        FileNotFoundError: no activation store at no/such/store (missing meta.json)
        """
        path = Path(path)
        meta_path = path / META_FILE
        if not meta_path.exists():
            raise FileNotFoundError(f"no activation store at {path} (missing {META_FILE})")
        return cls(path, read_json_file(meta_path))

    # -- description ------------------------------------------------------------------------
    @property
    def hooks(self) -> list[str]:
        """The captured hook names (axis 1 of the activations)."""
        return self.meta["hooks"]

    @property
    def positions(self) -> list[str]:
        """The captured position names (axis 2 of the activations)."""
        return self.meta["positions"]

    @property
    def layers(self) -> list[int]:
        """The layer of each hook (-1 for a hook outside `blocks.*`)."""
        return [_layer_of(h) for h in self.hooks]

    @property
    def model(self) -> ModelInfo:
        """The `ModelInfo` of the model the activations came from."""
        return ModelInfo(**self.meta["model"])

    @property
    def examples(self) -> list[dict]:
        """One dict per example: id, task, split, correct, sample_index, exact_span."""
        return self.meta["examples"]

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def labels(self) -> Int[Tensor, " n"]:
        """[n] labels, 1 = the answer is correct."""
        return torch.tensor([int(e["correct"]) for e in self.examples])

    def split_mask(self, split: str) -> Bool[Tensor, " n"]:
        """Which examples are in `split`.

        Args:
            split: "train" or "test" (whatever the records said).

        Returns:
            [n] bool mask.

        >>> meta = {"examples": [{"split": "train"}, {"split": "test"}, {"split": "train"}]}
        >>> ActivationStore(Path("demo"), meta).split_mask("train").tolist()
        [True, False, True]
        """
        return torch.tensor([e["split"] == split for e in self.examples])

    def shard_files(self) -> list[Path]:
        """The paths of every shard, written or not.

        Returns:
            One path per shard of the metadata, in row order.

        >>> meta = {"shards": [{"file": "shard_00000.safetensors"}]}
        >>> [p.as_posix() for p in ActivationStore(Path("demo"), meta).shard_files()]
        ['demo/shard_00000.safetensors']
        """
        return [self.path / s["file"] for s in self.meta["shards"]]

    def is_complete(self) -> bool:
        """Whether every shard has been written (False while a capture is unfinished).

        Returns:
            True when every shard file exists.

        >>> meta = {"shards": [{"file": "shard_00000.safetensors"}]}
        >>> ActivationStore(Path("no/such/dir"), meta).is_complete()
        False
        """
        return all(f.exists() for f in self.shard_files())

    # -- reading ----------------------------------------------------------------------------
    def load(
        self, hooks: Sequence[str] | None = None, positions: Sequence[str] | None = None
    ) -> tuple[Float[Tensor, "n n_hooks n_positions d_model"], Bool[Tensor, "n n_positions"]]:
        """All examples' activations (float32) for the chosen hooks/positions, and validity.

        Args:
            hooks: a subset of `self.hooks` (default all), in the order wanted.
            positions: a subset of `self.positions` (default all).

        Returns:
            `(acts, valid)`: acts [n, n_hooks, n_positions, d_model] (zeros where invalid) and
            valid [n, n_positions], True where the example has that position.

        Raises:
            RuntimeError: the store is incomplete (a shard is missing).

        See the class example.
        """
        if not self.is_complete():
            missing = [f.name for f in self.shard_files() if not f.exists()]
            raise RuntimeError(f"activation store {self.path} is incomplete: missing {missing}")
        h_idx = [self.hooks.index(h) for h in (hooks or self.hooks)]
        p_idx = [self.positions.index(p) for p in (positions or self.positions)]
        n, d = len(self), self.meta["d_model"]
        acts = torch.zeros((n, len(h_idx), len(p_idx), d))
        valid = torch.zeros((n, len(p_idx)), dtype=torch.bool)
        for f in self.shard_files():
            shard = read_tensors(f)
            rows = shard["rows"]
            acts[rows] = shard["acts"][:, h_idx][:, :, p_idx].float()
            valid[rows] = shard["valid"][:, p_idx]
        return acts, valid

    def cell(
        self, hook: str, position: str
    ) -> tuple[Float[Tensor, "m d_model"], Int[Tensor, " m"]]:
        """Activations of the examples that have this position, and their row indices.

        Args:
            hook: one of `self.hooks`.
            position: one of `self.positions`.

        Returns:
            `(x, rows)`: x [m, d_model] for the m examples valid at `position`, and their indices
            into `self.examples` / `self.labels`.

        See the class example.
        """
        acts, valid = self.load([hook], [position])
        rows = torch.nonzero(valid[:, 0]).squeeze(1)
        return acts[rows, 0, 0], rows

    def cell_by_key(
        self, hook: str, position: str, keys: Sequence[tuple[str, str]]
    ) -> tuple[Float[Tensor, "k d_model"], list[bool]]:
        """One row per (task, id) key: that question's greedy answer (sample 0) at this cell,
        zeros where it has no such answer or position (`available` says which).

        Args:
            hook: one of `self.hooks`.
            position: one of `self.positions`.
            keys: (task, id) pairs.

        Returns:
            `(X, available)`: X [len(keys), d_model] and one bool per key.

        Raises:
            ValueError: the hook or position was not captured.

        See the class example.
        """
        if hook not in self.hooks or position not in self.positions:
            raise ValueError(f"{hook} / {position} was not captured in {self.path}")
        x, rows = self.cell(hook, position)
        where = {}
        for i, r in enumerate(rows.tolist()):
            e = self.examples[r]
            if e.get("sample_index", 0) == 0:
                where[(e["task"], e["id"])] = i
        X = torch.zeros(len(keys), x.shape[1])
        available = [k in where for k in keys]
        for i, k in enumerate(keys):
            if k in where:
                X[i] = x[where[k]]
        return X, available
