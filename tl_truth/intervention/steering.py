"""Activation steering: add a vector to the residual stream at chosen token positions.

In the style of the steering-vectors library: a `Steering` holds (hook, vector) pairs and a
scope, and `apply(model)` is a context manager that always leaves the model as it found it.

Positions are absolute, unpadded token positions. Inside `generate_ids` they come from
`decode_state()`, so a scope means the same with or without the KV cache and under left
padding, and padding is never touched. Outside generation (a plain forward on an unpadded or
right-padded batch) the sequence index is the position, and "prompt"/"last_prompt"/"generated"
need `prompt_lengths`. Right padding comes after the real tokens, so under causal attention
steering it cannot change them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tl_truth.answers.generation import decode_state
from tl_truth.intervention.directions import Direction, Units

ScopeName = Literal["all", "prompt", "last_prompt", "generated"]
# Explicit positions: one collection for every row, or one collection per batch row.
Positions = Collection[int] | Sequence[Collection[int]]
Scope = ScopeName | Positions
SCOPES: tuple[str, ...] = ("all", "prompt", "last_prompt", "generated")
HookFn = Callable[..., Tensor]


def _resolve_scope(scope: Any, positions: Positions | None) -> tuple[str, Positions | None]:
    """Normalise (scope, positions): a non-string scope is itself the explicit positions."""
    if not isinstance(scope, str):
        if positions is not None:
            raise ValueError("give explicit positions either as `scope` or as `positions`")
        return "positions", scope
    if positions is not None:
        if scope not in ("all", "positions"):
            raise ValueError(f"explicit positions cannot be combined with scope {scope!r}")
        return "positions", positions
    if scope == "positions":
        raise ValueError("scope 'positions' needs `positions`")
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; choose from {SCOPES} or give positions")
    return scope, None


def _per_row(positions: Positions, batch: int) -> list[list[int]]:
    items = list(positions)
    if all(
        isinstance(p, (int, torch.SymInt)) or (torch.is_tensor(p) and p.ndim == 0) for p in items
    ):
        return [[int(p) for p in items]] * batch  # one set shared by every row
    if len(items) != batch:
        raise ValueError(f"got explicit positions for {len(items)} rows but the batch has {batch}")
    return [[int(p) for p in row] for row in items]


def _lengths(prompt_lengths: Any, batch: int, device: torch.device) -> Int[Tensor, " batch"]:
    lengths = torch.as_tensor(prompt_lengths, device=device).long().reshape(-1)
    if lengths.numel() == 1:
        return lengths.expand(batch)
    if lengths.numel() != batch:
        raise ValueError(f"got {lengths.numel()} prompt lengths for a batch of {batch}")
    return lengths


def position_mask(
    scope: str,
    batch: int,
    seq_len: int,
    device: torch.device,
    prompt_lengths: Any = None,
    positions: Positions | None = None,
) -> Bool[Tensor, "batch seq"]:
    """Which (row, position) cells of this forward pass to steer.

    Inside `generate_ids` positions come from its decode state (absolute, unpadded; left
    padding is never steered); outside it the sequence index is the position.

    Args:
        scope: "all", "prompt", "last_prompt", "generated" or "positions".
        batch: rows of the activation.
        seq_len: positions of the activation (1 per step with a KV cache).
        device: where the mask goes.
        prompt_lengths: per-row (or one shared) prompt length; needed for the prompt-relative
            scopes outside `generate_ids`.
        positions: the explicit positions for scope "positions": one collection for every
            row, or one per row.

    Returns:
        [batch, seq_len] bool mask.

    Raises:
        ValueError: a prompt-relative scope without `prompt_lengths` outside generation, or
            positions for the wrong number of rows.

    >>> cpu = torch.device("cpu")
    >>> position_mask("prompt", 2, 4, cpu, prompt_lengths=[2, 3]).int().tolist()
    [[1, 1, 0, 0], [1, 1, 1, 0]]
    >>> position_mask("positions", 1, 4, cpu, positions=[0, 3]).int().tolist()
    [[1, 0, 0, 1]]
    """
    state = decode_state()
    if state is not None:
        pos = state.absolute_positions(seq_len).to(device)
        lengths = state.prompt_lengths.to(device)
        real = pos >= 0  # left padding has negative positions
    else:
        pos = torch.arange(seq_len, device=device).expand(batch, seq_len)
        real = torch.ones(batch, seq_len, dtype=torch.bool, device=device)
        lengths = None
        if scope in ("prompt", "last_prompt", "generated"):
            if prompt_lengths is None:
                raise ValueError(
                    f"scope {scope!r} outside `generate_ids` needs `prompt_lengths` "
                    "(the forward pass alone cannot tell prompt from answer)"
                )
            lengths = _lengths(prompt_lengths, batch, device)
    if pos.shape[0] != batch:
        raise ValueError(f"decode state has {pos.shape[0]} rows but the activation has {batch}")
    if scope == "all":
        chosen = torch.ones_like(real)
    elif scope == "prompt":
        chosen = pos < lengths[:, None]
    elif scope == "last_prompt":
        chosen = pos == lengths[:, None] - 1
    elif scope == "generated":
        chosen = pos >= lengths[:, None]
    else:
        rows = _per_row(positions, batch)
        chosen = torch.stack(
            [
                torch.isin(pos[r], torch.tensor(rows[r], dtype=pos.dtype, device=device))
                for r in range(batch)
            ]
        )
    return chosen & real


def steering_hook(
    vector: Float[Tensor, " d"],
    scope: Scope = "all",
    prompt_lengths: Any = None,
    positions: Positions | None = None,
) -> HookFn:
    """A TransformerLens hook adding `vector` to a [batch, seq, d] activation at `scope`.

    A per-head activation ([batch, seq, n_heads, d_head], `attn.hook_z`) takes a vector of
    n_heads * d_head features, head-major (`vector.reshape(n_heads, d_head)[h]` shifts head h).

    Args:
        vector: [d] the vector to add (already scaled).
        scope: "all", "prompt", "last_prompt", "generated", or explicit positions (one
            collection for every row, or one per row).
        prompt_lengths: per-row prompt lengths, for prompt-relative scopes outside
            `generate_ids`.
        positions: explicit positions (with scope "all" or "positions"), instead of `scope`.

    Returns:
        A hook function `(act, hook) -> act + mask * vector` (out of place), for
        `model.run_with_hooks(fwd_hooks=[(name, fn)])` or `model.hooks`.

    Raises:
        ValueError: an unknown scope (at once), or a wrongly shaped activation (when called).

    >>> hook = steering_hook(torch.ones(4), scope=[1])
    >>> hook(torch.zeros(1, 3, 4)).sum(-1).tolist()
    [[0.0, 4.0, 0.0]]
    """
    kind, pos = _resolve_scope(scope, positions)
    vec = torch.as_tensor(vector).detach().reshape(-1)

    def hook(act: Float[Tensor, "batch seq *d"], hook: Any = None) -> Tensor:
        per_head = act.ndim == 4 and act.shape[2] * act.shape[3] == vec.shape[0]
        if not per_head and (act.ndim != 3 or act.shape[-1] != vec.shape[0]):
            name = getattr(hook, "name", "?")
            raise ValueError(
                f"steering expects a [batch, seq, {vec.shape[0]}] activation (or [batch, seq, "
                f"n_heads, d_head] of that many features) at {name}, got {tuple(act.shape)}"
            )
        mask = position_mask(kind, act.shape[0], act.shape[1], act.device, prompt_lengths, pos)
        v = vec.to(act.device, act.dtype).reshape(act.shape[2:])
        mask = mask.reshape(*mask.shape, *[1] * (act.ndim - 2)).to(act.dtype)
        # Out of place: the hook's input may be a view other code still reads.
        return act + mask * v

    return hook


@dataclass
class Steering:
    """Vectors to add at one or more hook points, at the positions given by `scope`.

    Args:
        vectors: (hook name, [d] vector) pairs; each vector is added as given.
        scope: "all", "prompt", "last_prompt", "generated", or explicit positions.
        positions: explicit positions (instead of giving them as `scope`).
        prompt_lengths: only for prompt-relative scopes outside `generate_ids`.

    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> tokens = torch.tensor([[1, 5, 9, 30]])
    >>> steering = Steering([("blocks.0.hook_resid_post", 5 * torch.ones(32))], scope=[3])
    >>> with torch.no_grad():
    ...     plain = model(tokens)
    ...     with steering.apply(model):
    ...         steered = model(tokens)
    >>> torch.allclose(steered[0, :3], plain[0, :3]), torch.allclose(steered[0, 3], plain[0, 3])
    (True, False)
    """

    vectors: list[tuple[str, Float[Tensor, " d"]]]
    scope: Scope = "all"
    positions: Positions | None = None
    prompt_lengths: Any = None  # only for prompt-relative scopes outside `generate_ids`

    def __post_init__(self) -> None:
        _resolve_scope(self.scope, self.positions)  # fail early on a bad scope

    def hooks(self) -> list[tuple[str, HookFn]]:
        """(hook name, fn) pairs for `model.run_with_hooks(fwd_hooks=...)` or `model.hooks`.

        Returns:
            One `steering_hook` per vector.

        >>> Steering([("blocks.0.hook_resid_post", torch.ones(32))]).hooks()[0][0]
        'blocks.0.hook_resid_post'
        """
        return [
            (name, steering_hook(vec, self.scope, self.prompt_lengths, self.positions))
            for name, vec in self.vectors
        ]

    @contextmanager
    def apply(self, model: Any) -> Iterator[Any]:
        """Steer `model` inside the `with`; its hooks are restored on exit, even on errors.

        Args:
            model: a TransformerLens model.

        Yields:
            The same model, steered until the block ends.

        Raises:
            KeyError: the model has no such hook point (the bridge would silently steer nothing).

        >>> from tl_truth.testing import tiny_model
        >>> model = tiny_model("llama")
        >>> with Steering([("blocks.0.hook_resid_post", torch.ones(32))]).apply(model) as m:
        ...     n_hooks = len(m.hook_dict["blocks.0.hook_resid_post"].fwd_hooks)
        >>> n_hooks, len(model.hook_dict["blocks.0.hook_resid_post"].fwd_hooks)
        (1, 0)
        """
        missing = [name for name, _ in self.vectors if name not in model.hook_dict]
        if missing:  # the bridge silently skips unknown names, which would steer nothing
            raise KeyError(f"model has no hook point(s) {missing}")
        pairs = self.hooks()
        try:
            with model.hooks(fwd_hooks=pairs):
                yield model
        finally:
            _remove_leftovers(model, pairs)


def _remove_leftovers(model: Any, pairs: list[tuple[str, HookFn]]) -> None:
    """Belt and braces: drop any of our hooks that `model.hooks` failed to remove."""
    ours = {id(fn) for _, fn in pairs}
    for name, _ in pairs:
        point = model.hook_dict.get(name)
        if point is None:
            continue
        keep = []
        for handle in point.fwd_hooks:
            if id(getattr(handle, "user_hook", None)) in ours:
                handle.hook.remove()
            else:
                keep.append(handle)
        point.fwd_hooks = keep


def _as_vector(
    direction_or_vector: Direction | Tensor, hook: str | None, alpha: float, units: Units
) -> tuple[str, Tensor]:
    if isinstance(direction_or_vector, Direction):
        name = hook or direction_or_vector.hook
        vec = direction_or_vector.scaled(alpha, units)
    else:
        if units != "abs" and units != "sd":
            raise ValueError(f"units must be 'sd' or 'abs', got {units!r}")
        # A bare vector has no projection std: "sd" would be meaningless, so use it as given.
        name, vec = hook, torch.as_tensor(direction_or_vector) * alpha
    if name is None:
        raise ValueError("no hook point: pass `hook=` (the direction does not name one)")
    return name, vec


@contextmanager
def steer(
    model: Any,
    direction_or_vector: Direction | Tensor,
    hook: str | None = None,
    alpha: float = 1.0,
    units: Units = "sd",
    scope: Scope = "all",
    positions: Positions | None = None,
    prompt_lengths: Any = None,
) -> Iterator[Any]:
    """`with steer(model, direction, alpha=4): ...` adds `alpha` SDs of `direction` at its hook.

    A bare tensor is added as `alpha * vector` (no projection std to scale by).

    Args:
        model: a TransformerLens model.
        direction_or_vector: a `Direction` (e.g. `from_probe(probe, acts)`) or a [d] tensor.
        hook: the hook point (default the direction's own `hook`; required for a tensor).
        alpha: the strength; negative pushes the other way.
        units: "sd" (standard deviations of the direction's projection) or "abs".
        scope: "all", "prompt", "last_prompt", "generated", or explicit positions.
        positions: explicit positions (instead of giving them as `scope`).
        prompt_lengths: for prompt-relative scopes outside `generate_ids`.

    Yields:
        The model, steered until the `with` block ends (also on errors).

    Raises:
        ValueError: no hook point, or bad units/scope.
        KeyError: the model has no such hook point.

    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> tokens = torch.tensor([[1, 5, 9, 30]])
    >>> d = Direction(torch.ones(32), hook="blocks.0.hook_resid_post", projection_std=2.0)
    >>> with torch.no_grad():
    ...     plain = model(tokens)
    ...     with steer(model, d, alpha=4.0):
    ...         steered = model(tokens)
    ...     after = model(tokens)
    >>> torch.allclose(steered, plain), torch.allclose(after, plain)
    (False, True)
    """
    name, vec = _as_vector(direction_or_vector, hook, alpha, units)
    with Steering([(name, vec)], scope, positions, prompt_lengths).apply(model) as m:
        yield m
