"""Saving and loading a `Probe`: `.safetensors` for the tensors, `.json` for the rest.

`ProbeFiles` is a mixin of `Probe` (in `tl_truth.probing.probe`) holding `save` and `load`.
Nothing is ever pickled, and `load` checks the probe against the model, hook and position it
is about to read (`Probe.check_compatible`), so a probe is never silently applied to the wrong
activations. Kept apart from the probe's fitting and scoring, which is what most readers want.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

from tl_truth.models import ModelInfo
from tl_truth.probing.solver import PROBE_VERSION
from tl_truth.result_io import read_json_file, read_tensors

if TYPE_CHECKING:
    from tl_truth.probing.probe import Probe


class ProbeFiles:
    """`save` / `load` of a `Probe` (a mixin; see `Probe` for the fields).

    >>> from tl_truth.probing import Probe
    >>> issubclass(Probe, ProbeFiles)
    True
    """

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write `path.safetensors` (weight, mean, scale, bias) and `path.json` (the rest).

        Args:
            path: the base path; a `.json` or `.safetensors` suffix is dropped, parent directories
                are created.

        Returns:
            The two paths written.

        >>> import tempfile
        >>> from tl_truth.probing import Probe
        >>> probe = Probe("mean_diff", torch.ones(2), 0.5, torch.zeros(2), torch.ones(2))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     st, js = probe.save(f"{d}/probes/best")
        ...     back = Probe.load(js)
        >>> st.name, js.name, back.bias, back.kind
        ('best.safetensors', 'best.json', 0.5, 'mean_diff')
        """
        _paths(path)[0].parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            "weight": self.weight.contiguous(),
            "mean": self.mean.contiguous(),
            "scale": self.scale.contiguous(),
            "bias": torch.tensor([self.bias], dtype=torch.float64),
        }
        meta = {
            "format": "tl_truth.probe",
            "version": PROBE_VERSION,
            "kind": self.kind,
            "hook": self.hook,
            "layer": self.layer,
            "position": self.position,
            "C": self.C,
            "model": self.model,
            "metadata": self.metadata,
        }
        st, js = _paths(path)
        save_file(tensors, str(st))
        js.write_text(json.dumps(meta, indent=2))
        return st, js

    @classmethod
    def load(
        cls,
        path: str | Path,
        expect_model: ModelInfo | dict | None = None,
        expect_hook: str | None = None,
        expect_position: str | None = None,
    ) -> Probe:
        """Read a probe saved by `save`, checking it against what it will be applied to.

        Args:
            path: the base path, or either of the two files.
            expect_model: the model the probe will read (`ModelInfo` or dict); None: not checked.
            expect_hook: the hook point it will read; None: not checked.
            expect_position: the position it will read; None: not checked.

        Returns:
            The `Probe`.

        Raises:
            ValueError: the JSON is not a tl_truth probe.
            ProbeMismatchError: an expectation differs from the probe's training.

        >>> import tempfile
        >>> from tl_truth.probing import Probe
        >>> probe = Probe("mean_diff", torch.ones(2), 0.0, torch.zeros(2), torch.ones(2),
        ...               position="exact_last")
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = probe.save(f"{d}/p")
        ...     Probe.load(f"{d}/p", expect_position="exact_first")
        Traceback (most recent call last):
        ...
        tl_truth.probing.probe.ProbeMismatchError: probe does not match these activations: position: 'exact_last' != 'exact_first' (probe != given)
        """
        st, js = _paths(path)
        meta = read_json_file(js)
        if meta.get("format") != "tl_truth.probe":
            raise ValueError(f"{js} is not a tl_truth probe")
        t = read_tensors(st)
        probe = cls(
            kind=meta["kind"],
            weight=t["weight"],
            bias=float(t["bias"][0]),
            mean=t["mean"],
            scale=t["scale"],
            hook=meta["hook"],
            layer=meta["layer"],
            position=meta["position"],
            C=meta["C"],
            model=meta["model"],
            metadata=meta["metadata"],
        )
        probe.check_compatible(expect_model, expect_hook, expect_position)
        return probe


def _paths(path: str | Path) -> tuple[Path, Path]:
    """(x.safetensors, x.json) for x, x.json or x.safetensors; dots inside x are kept."""
    p = Path(path)
    base = p.with_suffix("") if p.suffix in (".json", ".safetensors") else p
    return base.parent / f"{base.name}.safetensors", base.parent / f"{base.name}.json"
