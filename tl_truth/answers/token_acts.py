"""Activations recorded by the decode loop itself: no second forward pass over the answers.

`TokenRecorder` is handed to `generate_ids(record=...)`. While a batch decodes, its hooks keep,
for every pass of the loop, the activation of the last token that pass feeds: the prompt pass
feeds the left-padded prompts, whose last column is every row's last prompt token, and step k
feeds the k-th generated token (answer token k - 1). The stop token is never fed back, so an
answer of n tokens is read by passes 0..n; a row that runs to `max_new_tokens` gets one extra
pass for its last token (the loop asks for it: `TokenRecorder.wants_last_pass`).

Row r's activations are `[n_hooks, 1 + n_answer, d_model]`, index 0 the last prompt token
(full-sequence position n_prompt - 1) and index j + 1 answer token j (position n_prompt + j):
`fused_index` turns the full-sequence positions of `tl_truth.answers.positions` into these.
They are the same tokens the two-pass capture (`tl_truth.probing.capture`) reads from the
unpadded full sequence; the values differ only by floating-point error (the KV-cached,
left-padded passes sum in another order).

Activations stay on the model's device (in the store dtype) while the batch decodes and move to
the CPU once per batch, so memory is bounded by one batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_truth.answers.decode_step import decode_state


class TokenRecorder:
    """Hooks that keep the last fed token's activation at every pass of one decoded batch.

    Args:
        hooks: hook point names (`blocks.{l}.hook_resid_post`, `hook_embed`, ...).
        dtype: the dtype activations are kept in (the store's: float16 by default).

    >>> from tl_truth.answers.generation import GenerationConfig, generate_ids
    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> rec = TokenRecorder(["blocks.1.hook_resid_post"])
    >>> got = []
    >>> out = generate_ids(model, [[1, 20, 30], [1, 40]], GenerationConfig(max_new_tokens=4),
    ...                    progress=False, record=rec,
    ...                    on_batch=lambda rows, results, acts: got.extend(acts))
    >>> [tuple(a.shape) for a in got] == [(1, 1 + len(r[0]["answer_token_ids"]), 32) for r in out]
    True
    >>> got[0].dtype
    torch.float16
    """

    def __init__(self, hooks: Sequence[str], dtype: torch.dtype = torch.float16):
        self.hooks = list(hooks)
        self.dtype = dtype
        self._passes: dict[int, list[Tensor | None]] = {}
        self._index: Tensor | None = None
        self._points: tuple[int, list[Any]] | None = None  # (id(model), its hook points)

    def fwd_hooks(self) -> list[tuple[str, Any]]:
        """(hook name, fn) pairs for `model.hooks(fwd_hooks=...)` around one batch's decoding."""

        def make(j: int):
            def hook(act: Tensor, hook: Any) -> None:
                state = decode_state()
                if state is None or state.step < 0:  # outside a batch, or a shared prefix
                    return
                slot = self._passes.setdefault(state.step, [None] * len(self.hooks))
                # the last column is the token this pass feeds last; copy, never keep a view
                slot[j] = act[:, -1].detach().to(self.dtype, copy=True)

            return hook

        return [(h, make(j)) for j, h in enumerate(self.hooks)]

    @contextmanager
    def attached(self, model: Any) -> Iterator[None]:
        """Its hooks on `model` for one batch; on exit exactly these are removed.

        The same as `model.hooks(fwd_hooks=self.fwd_hooks())`, but the hook points are looked
        up once per model: the bridge rebuilds `hook_dict` (~8 ms) for every name it adds.

        Raises:
            KeyError: the model has no such hook point.

        >>> from tl_truth.testing import tiny_model
        >>> model = tiny_model("llama")
        >>> rec = TokenRecorder(["blocks.0.hook_resid_post"])
        >>> with rec.attached(model):
        ...     inside = len(model.hook_dict["blocks.0.hook_resid_post"].fwd_hooks)
        >>> inside, len(model.hook_dict["blocks.0.hook_resid_post"].fwd_hooks)
        (1, 0)
        """
        if self._points is None or self._points[0] != id(model):
            hook_dict = model.hook_dict
            missing = [h for h in self.hooks if h not in hook_dict]
            if missing:
                raise KeyError(f"the model has no hook point(s) {missing} to record")
            self._points = (id(model), [hook_dict[h] for h in self.hooks])
        pairs = [
            (point, fn) for point, (_, fn) in zip(self._points[1], self.fwd_hooks(), strict=True)
        ]
        try:
            for point, fn in pairs:
                point.add_hook(fn, dir="fwd")
            yield
        finally:
            for point, fn in pairs:
                for handle in [h for h in point.fwd_hooks if h.user_hook is fn]:
                    handle.hook.remove()
                    point.fwd_hooks.remove(handle)

    def begin(self) -> None:
        """Forget the previous batch (called before each batch decodes)."""
        self._passes, self._index = {}, None

    def expand(self, index: Int[Tensor, " rows"]) -> None:
        """The prompt pass ran once per distinct prompt: row r's prompt pass is `index[r]`."""
        self._index = index

    def take(self, answer_lengths: Sequence[int]) -> list[Float[Tensor, "n_hooks tokens d_model"]]:
        """Each row's activations, `[n_hooks, 1 + n_answer, d_model]` on the CPU.

        Args:
            answer_lengths: each row's number of answer tokens (the stop token not counted).

        Returns:
            One tensor per row: index 0 the last prompt token, j + 1 answer token j.

        Raises:
            RuntimeError: a pass a row needs did not run every hook.
        """
        n_pass = 1 + max(answer_lengths, default=0)
        missing = [s for s in range(n_pass) if None in self._passes.get(s, [None])]
        if missing:
            raise RuntimeError(
                f"the decode loop did not record passes {missing} for every hook of "
                f"{self.hooks}: a hook that does not fire on every forward pass cannot be "
                "captured inside generation (use the two-pass capture)"
            )
        per_hook = []
        for j in range(len(self.hooks)):
            first = self._passes[0][j]
            if self._index is not None:
                first = first[self._index.to(first.device)]
            steps = [first, *(self._passes[s][j] for s in range(1, n_pass))]
            per_hook.append(torch.stack(steps, 1).cpu())  # [rows, n_pass, d]: one copy per hook
        acts = torch.stack(per_hook, 1)  # [rows, n_hooks, n_pass, d]
        self.begin()
        return [acts[r, :, : n + 1].clone() for r, n in enumerate(answer_lengths)]


def fused_index(
    positions: Int[Tensor, "batch n_positions"], prompt_lengths: Int[Tensor, " batch"]
) -> Int[Tensor, "batch n_positions"]:
    """Full-sequence positions -> indices into `TokenRecorder.take`'s rows (-1 stays -1).

    Positions inside the prompt before its last token come out as -2: the decode loop did not
    keep them (the two-pass capture serves such records).

    >>> fused_index(torch.tensor([[2, 3, -1], [0, 4, 5]]), torch.tensor([3, 2]))
    tensor([[ 0,  1, -1],
            [-2,  3,  4]])
    """
    shifted = positions - (prompt_lengths[:, None] - 1)
    return torch.where(positions >= 0, shifted, positions).masked_fill(
        (positions >= 0) & (shifted < 0), -2
    )


class AnswerCapture(Protocol):
    """What `answer_questions(capture=...)` feeds as answers are generated and located
    (`tl_truth.probing.FusedCapture` is one)."""

    recorder: TokenRecorder

    def add(
        self,
        indices: Sequence[int],
        records: Sequence[Any],
        acts: Sequence[Tensor] | None,
        final: Sequence[bool],
    ) -> None:
        """One generated batch: record indices, their records so far, their activations
        (None when the batch was read back from a checkpoint) and whether each record's
        positions are final (False: the exact answer is still to be extracted by the model)."""
        ...
