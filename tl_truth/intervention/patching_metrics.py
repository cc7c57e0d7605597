"""Patching metrics: what to read from each patched forward (TransformerLens `patching_metric`s).

A metric is a callable `logits -> 0-dim tensor`, so every metric here also works with
`transformer_lens.patching.get_act_patch_resid_pre` and friends. `logit_metric` reads the logits
directly. A probe reads an internal activation, not the logits, so `probe_metric` is a context
manager that registers a capture hook on the probe's hook point for as long as it is open; see
`ProbeMetric`. Kept apart from `tl_truth.intervention.patching` (which runs the patches) because
the metrics are useful on their own, with TransformerLens' patching functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jaxtyping import Float
from torch import Tensor

from tl_truth.probing.probe import Probe

Metric = Callable[[Float[Tensor, "batch pos d_vocab"]], Float[Tensor, ""]]
"""A TransformerLens `patching_metric`: logits [batch, pos, d_vocab] -> a 0-dim tensor."""


# ---------------------------------------------------------------------------------------------
# Metrics


class ProbeMetric:
    """A `patching_metric` giving a probe's decision function (logit of P(correct)).

    Mechanism: a metric only receives the logits, so on `__enter__` a *permanent* TransformerLens
    hook is added to `probe.hook` (it survives the `reset_hooks()` that `run_with_hooks` and
    `hooks()` do at their end). Every forward through that hook point stores the activation at
    `position` (detached); `metric(logits)` applies the probe to the activation stored by the
    latest forward, i.e. the one that produced `logits`, as long as the metric is evaluated right
    after its forward (what TL's patching functions do). With a batch, the per-row scores are
    averaged. `__exit__` removes exactly that hook, also when the block raises.

    The capture hook is moved to the end of its hook point's hooks before every forward, so a
    patch on the probe's own hook point (added later, e.g. by `run_with_hooks`) is seen by it.

    Args:
        model: a TransformerLens model.
        probe: a `Probe` with `hook` set.
        position: the full-sequence index the probe reads (negative counts from the end).

    Raises:
        ValueError: the probe has no hook.

    >>> import torch
    >>> from tl_truth.probing import Probe
    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> probe = Probe("mean_diff", torch.ones(32), 0.0, torch.zeros(32), torch.ones(32),
    ...               hook="blocks.1.hook_resid_post")
    >>> with ProbeMetric(model, probe, position=-1) as metric, torch.no_grad():
    ...     logits = model(torch.tensor([[1, 5, 9], [1, 7, 8]]))
    ...     rows, mean = metric.per_row(logits), metric(logits)
    >>> rows.shape, torch.allclose(rows.mean(), mean)
    (torch.Size([2]), True)
    """

    def __init__(self, model: Any, probe: Probe, position: int):
        if probe.hook is None:
            raise ValueError("the probe has no `hook`: cannot tell which activation to read")
        self.model, self.probe, self.position = model, probe, int(position)
        self.activation: Tensor | None = None  # [batch, d_model] from the latest forward
        self._hook_point: Any = None
        self._lens_handle: Any = None
        self._pre_handle: Any = None

    def _capture(self, act: Tensor, hook: Any) -> None:
        # A forward shorter than `position` (e.g. the clean run of a pair of different lengths)
        # leaves nothing to read; calling the metric after it raises.
        in_range = -act.shape[1] <= self.position < act.shape[1]
        self.activation = act[:, self.position].detach().clone() if in_range else None

    def _move_last(self, module: Any, args: Any) -> None:
        # Forward pre-hooks run before the forward hooks are iterated: safe to reorder here.
        handle = self._lens_handle.hook
        if handle.id in module._forward_hooks:
            module._forward_hooks.move_to_end(handle.id)

    def __enter__(self) -> ProbeMetric:
        if self._lens_handle is not None:
            raise RuntimeError("this probe metric is already open")
        hp = self.model.hook_dict[self.probe.hook]
        before = list(hp.fwd_hooks)
        hp.add_hook(self._capture, dir="fwd", is_permanent=True)
        added = [h for h in hp.fwd_hooks if all(h is not b for b in before)]
        if len(added) != 1:  # pragma: no cover - defensive, depends on TransformerLens internals
            raise RuntimeError(f"could not identify the capture hook on {self.probe.hook}")
        self._hook_point, self._lens_handle = hp, added[0]
        self._pre_handle = hp.register_forward_pre_hook(self._move_last)
        self.activation = None
        return self

    def close(self) -> None:
        """Remove the capture hook (idempotent).

            >>> import torch
        >>> from tl_truth.probing import Probe
            >>> from tl_truth.testing import tiny_model
            >>> model = tiny_model("llama")
            >>> probe = Probe("mean_diff", torch.ones(32), 0.0, torch.zeros(32), torch.ones(32),
            ...               hook="blocks.1.hook_resid_post")
            >>> metric = ProbeMetric(model, probe, 0).__enter__()
            >>> metric.close(); metric.close()
            >>> len(model.hook_dict["blocks.1.hook_resid_post"].fwd_hooks)
            0
        """
        if self._lens_handle is not None:
            self._lens_handle.hook.remove()
            self._hook_point.fwd_hooks[:] = [
                h for h in self._hook_point.fwd_hooks if h is not self._lens_handle
            ]
            self._pre_handle.remove()
        self._hook_point = self._lens_handle = self._pre_handle = None

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def per_row(self, logits: Tensor | None = None) -> Float[Tensor, " batch"]:
        """The probe's decision function for each row of the latest forward.

        Args:
            logits: ignored (the activation was captured during the forward); accepted so the
                metric has the patching-metric signature.

        Returns:
            [batch] decision values (> 0 predicts "correct").

        Raises:
            RuntimeError: outside the `with`, or no forward reached the probe's hook point (or the
                forward was shorter than `position`).

        See the class example.
        """
        if self._lens_handle is None:
            raise RuntimeError("use the probe metric inside `with probe_metric(...) as metric:`")
        if self.activation is None:
            raise RuntimeError(f"no forward has reached {self.probe.hook} since the metric opened")
        return self.probe.decision_function(self.activation)

    def __call__(self, logits: Tensor | None = None) -> Float[Tensor, ""]:
        return self.per_row(logits).mean()


def probe_metric(model: Any, probe: Probe, position: int) -> ProbeMetric:
    """`with probe_metric(model, probe, position) as metric:` -> `metric(logits)`, the probe's
    decision function on `probe.hook`'s activation at `position` (full-sequence index, e.g.
    from `tl_truth.answers.positions.resolve_position`) in the forward that produced `logits`.

    Args:
        model: a TransformerLens model.
        probe: a `Probe` with `hook` set.
        position: the full-sequence index the probe reads.

    Returns:
        A `ProbeMetric` (a context manager; open it before any forward it should read).

    >>> import torch
    >>> from tl_truth.probing import Probe
    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> probe = Probe("mean_diff", torch.ones(32), 0.0, torch.zeros(32), torch.ones(32),
    ...               hook="blocks.1.hook_resid_post")
    >>> with probe_metric(model, probe, position=2) as metric, torch.no_grad():
    ...     value = metric(model(torch.tensor([[1, 5, 9, 30]])))
    >>> value.ndim
    0
    """
    return ProbeMetric(model, probe, position)


def logit_metric(token_id: int, position: int) -> Metric:
    """`patching_metric`: the logit of `token_id` at `position` (batch-averaged).

    `position` is the position whose logits *predict* the token (e.g. the last prompt token for
    the first answer token).

    Args:
        token_id: the token whose logit is read.
        position: the sequence index of the logits.

    Returns:
        A function `logits -> 0-dim tensor`.

    >>> import torch
    >>> logits = torch.zeros(2, 3, 10)
    >>> logits[:, 1, 7] = torch.tensor([1.0, 3.0])
    >>> logit_metric(token_id=7, position=1)(logits).item()
    2.0
    """

    def metric(logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, ""]:
        return logits[:, position, token_id].mean()

    return metric
