"""One protocol for every result: `to_dict`, `to_dataframe`, `to_markdown`, `plot`, `save`, `load`.

A result class mixes in `Result` and defines `to_dict()` (full precision), `from_dict()`,
`to_dataframe()` and `plot(ax=None)`; the mixin adds the rest:

- `to_markdown()`: a markdown table built from a DataFrame (`markdown_frame()`, by default
  `to_dataframe()`), then the class's notes (`markdown_notes()`); `_repr_markdown_` for notebooks.
- `save(dir)`: `{result_name}.json` (`to_json()`: `to_dict()` rounded to 4 places *here*, at
  write time), `{result_name}.md` and `{figure_name}.png`; returns `dir`.
- `load(dir)`: `from_dict()` of that JSON.

Figures for `save` are built on a `matplotlib.figure.Figure` (`figure()`), without pyplot, so saving
never changes the matplotlib backend (in Jupyter, later figures keep showing inline).
`plot(ax=None)` creates a pyplot figure only when no `ax` is given, so it shows inline in a
notebook; given an `ax`, it draws there and returns it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def json_safe(x: Any, digits: int | None = 4) -> Any:
    """NaN -> null (strict JSON), floats rounded to `digits` places (None: not rounded), numpy
    scalars -> Python, tuples -> lists."""
    if isinstance(x, dict):
        return {k: json_safe(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v, digits) for v in x]
    if isinstance(x, (float, np.floating)):
        if np.isnan(x):
            return None
        return float(x) if digits is None else round(float(x), digits)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def write_json(path: str | Path, doc: Any, ensure_ascii: bool = False) -> Path:
    """`doc` as indented JSON (no trailing newline)."""
    path = Path(path)
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=ensure_ascii))
    return path


def _cell(v: Any, floatfmt: str) -> str:
    if v is None or v is _missing() or (isinstance(v, (float, np.floating)) and math.isnan(v)):
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return format(float(v), floatfmt)
    return str(v).replace("|", "\\|").replace("\n", " ")


def _missing() -> Any:
    import pandas as pd

    return pd.NA  # the missing value of nullable dtypes ("Int64")


def markdown_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A GitHub markdown table of `df`'s columns (the index is left out). Missing values are
    "-", floats use `floatfmt`, "|" in text is escaped."""
    cols = [str(c) for c in df.columns]
    lines = [
        "| " + " | ".join(_cell(c, floatfmt) for c in cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for row in df.itertuples(index=False, name=None):
        lines.append("| " + " | ".join(_cell(v, floatfmt) for v in row) + " |")
    return "\n".join(lines) + "\n"


def pyplot_axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    """`ax`, or, when None, the Axes of a new pyplot figure (it shows inline in a notebook)."""
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)[1]


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Write a Figure (or an Axes' figure) as PNG; closes it if pyplot manages it. The backend
    is left as it is."""
    fig = getattr(fig, "figure", fig)  # an Axes knows its Figure
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    if getattr(fig.canvas, "manager", None) is not None:  # a pyplot figure: release it
        import matplotlib.pyplot as plt

        plt.close(fig)
    return Path(path)


class Result:
    """The result protocol (a mixin for dataclasses).

    Subclasses set `result_name` and define `to_dict()` (full precision), `from_dict()`,
    `to_dataframe()` and `plot(ax=None) -> Axes`; optionally `title()`, `markdown_frame()`,
    `markdown_notes()`, `figure()` (for figures with several panels) and `figsize`.
    """

    result_name: ClassVar[str] = "result"
    figure_name: ClassVar[str | None] = None  # PNG file stem; None: `result_name`
    json_digits: ClassVar[int | None] = 4  # rounding at write time; None: full precision
    json_raw_keys: ClassVar[tuple[str, ...]] = ("meta",)  # top-level keys written as they are
    json_ensure_ascii: ClassVar[bool] = False
    dpi: ClassVar[int] = 120
    figsize: ClassVar[tuple[float, float]] = (6.4, 4.0)

    # -- to be defined by each result -------------------------------------------------------

    def to_dict(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: dict) -> Any:
        raise NotImplementedError(f"{cls.__name__} cannot be rebuilt from a dict")

    def to_dataframe(self) -> pd.DataFrame:
        raise NotImplementedError

    def plot(self, ax: Axes | None = None) -> Axes:
        raise NotImplementedError

    # -- markdown ----------------------------------------------------------------------------

    def title(self) -> str | None:
        """A heading for the saved markdown and notebooks (not part of `to_markdown()`)."""
        return None

    def markdown_frame(self) -> pd.DataFrame:
        """The DataFrame `to_markdown()` shows: `to_dataframe()` unless a result condenses it."""
        return self.to_dataframe()

    def markdown_notes(self) -> str:
        """Markdown after the table (conclusions, more tables); empty by default."""
        return ""

    def to_markdown(self) -> str:
        """The table of `markdown_frame()`, then `markdown_notes()`."""
        notes = self.markdown_notes()
        return markdown_table(self.markdown_frame()) + ("\n" + notes if notes else "")

    def _repr_markdown_(self) -> str:
        title = self.title()
        return (f"## {title}\n\n" if title else "") + self.to_markdown()

    # -- files -------------------------------------------------------------------------------

    def to_json(self) -> dict:
        """What `save` writes as JSON: `to_dict()` rounded to `json_digits` places, NaN as
        null (keys in `json_raw_keys` are written as they are)."""
        d = self.to_dict()
        return {
            k: v if k in self.json_raw_keys else json_safe(v, self.json_digits)
            for k, v in d.items()
        }

    def figure(self) -> Figure:
        """The figure `save` writes, built without pyplot (no backend change, nothing left
        open)."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=self.figsize)
        self.plot(ax=fig.add_subplot())
        return fig

    def save(self, out_dir: str | Path) -> Path:
        """`{result_name}.json`, `.md` and `{figure_name}.png` in `out_dir`; returns `out_dir`."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / f"{self.result_name}.json", self.to_json(), self.json_ensure_ascii)
        (out / f"{self.result_name}.md").write_text(self._repr_markdown_())
        png = out / f"{self.figure_name or self.result_name}.png"
        self.figure().savefig(png, dpi=self.dpi, bbox_inches="tight")
        return out

    @classmethod
    def load(cls, out_dir: str | Path) -> Any:
        """The result `save` wrote to `out_dir`."""
        path = Path(out_dir) / f"{cls.result_name}.json"
        return cls.from_dict(json.loads(path.read_text()))


def save_outputs(out_dir: str | Path, name: str, doc: dict, markdown: str, figure: Any) -> Path:
    """Write `doc` as JSON, `markdown`, and `figure` (a Figure or an Axes) as PNG.

    Kept for callers outside the `Result` protocol; the backend is not changed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{name}.json", doc)
    (out / f"{name}.md").write_text(markdown)
    save_figure(figure, out / f"{name}.png")
    return out
