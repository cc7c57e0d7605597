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

The helpers (`json_safe`, `write_json`, `markdown_table`, `pyplot_axes`, `save_figure`,
`save_outputs`) live in `tl_truth.result_io` and are re-exported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from tl_truth.result_io import (
    json_safe,
    markdown_table,
    pyplot_axes,
    read_json_file,
    save_figure,
    save_outputs,
    write_json,
)

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "Result",
    "json_safe",
    "markdown_table",
    "pyplot_axes",
    "save_figure",
    "save_outputs",
    "write_json",
]


class Result:
    """The result protocol (a mixin for dataclasses).

    Subclasses set `result_name` and define `to_dict()` (full precision), `from_dict()`,
    `to_dataframe()` and `plot(ax=None) -> Axes`; optionally `title()`, `markdown_frame()`,
    `markdown_notes()`, `figure()` (for figures with several panels) and `figsize`.

    Attributes:
        result_name: the stem of the JSON and markdown files `save` writes.
        figure_name: the stem of the PNG (None: `result_name`).
        json_digits: places floats are rounded to at write time (None: full precision).
        json_raw_keys: top-level keys written as they are (not rounded).
        json_ensure_ascii: escape non-ASCII characters in the JSON.
        dpi: the PNG's resolution.
        figsize: the figure size of `plot()` and `figure()`.

    >>> import tempfile
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Count(Result):
    ...     n: int
    ...     result_name = "count"
    ...     def to_dict(self):
    ...         return {"n": self.n}
    ...     @classmethod
    ...     def from_dict(cls, d):
    ...         return cls(d["n"])
    ...     def to_dataframe(self):
    ...         import pandas as pd
    ...         return pd.DataFrame({"n": [self.n]})
    ...     def plot(self, ax=None):
    ...         ax = pyplot_axes(ax, self.figsize)
    ...         ax.bar(["n"], [self.n])
    ...         return ax
    >>> with tempfile.TemporaryDirectory() as d:
    ...     files = sorted(p.name for p in Count(3).save(d).iterdir())
    ...     back = Count.load(d)
    >>> files, back
    (['count.json', 'count.md', 'count.png'], Count(n=3))
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
        """The result as plain Python values, at full precision (defined by each result).

        Returns:
            A dict that `from_dict` turns back into the result.

        >>> from tl_truth.studies import SelectionResult
        >>> res = SelectionResult({"greedy": {"value": 0.5, "ci": [0.25, 0.75]}}, {}, {}, {}, 4, 2)
        >>> res.to_dict()["accuracy"]
        {'greedy': {'value': 0.5, 'ci': [0.25, 0.75]}}
        """
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: dict) -> Any:
        """The result a `to_dict()` (or the JSON `save` wrote) describes.

        Args:
            d: a dict as `to_dict()` returns it.

        Returns:
            The result.

        >>> from tl_truth.studies import SelectionResult
        >>> res = SelectionResult({"greedy": {"value": 0.5, "ci": [0.25, 0.75]}}, {}, {}, {}, 4, 2)
        >>> SelectionResult.from_dict(res.to_dict()) == res
        True
        """
        raise NotImplementedError(f"{cls.__name__} cannot be rebuilt from a dict")

    def to_dataframe(self) -> pd.DataFrame:
        """The result as a table (defined by each result; one row per method, cell, ...).

        Returns:
            A pandas DataFrame.

        >>> from tl_truth.studies import SelectionResult
        >>> res = SelectionResult({"greedy": {"value": 0.5, "ci": [0.25, 0.75]}}, {}, {}, {}, 4, 2)
        >>> res.to_dataframe()[["strategy", "accuracy"]].values.tolist()
        [['greedy', 0.5]]
        """
        raise NotImplementedError

    def plot(self, ax: Axes | None = None) -> Axes:
        """Draw the result (defined by each result).

        Args:
            ax: the Axes to draw on; None: a new pyplot figure (shown inline in a notebook).

        Returns:
            The Axes drawn on.

        >>> from matplotlib.figure import Figure
        >>> from tl_truth.studies import SelectionResult
        >>> res = SelectionResult({"greedy": {"value": 0.5, "ci": [0.25, 0.75]}}, {}, {}, {}, 4, 2)
        >>> ax = Figure().add_subplot()
        >>> res.plot(ax=ax) is ax
        True
        """
        raise NotImplementedError

    # -- markdown ----------------------------------------------------------------------------

    def title(self) -> str | None:
        """A heading for the saved markdown and notebooks (not part of `to_markdown()`).

        Returns:
            The title, or None (no heading).

        >>> from tl_truth.studies import SelectionResult
        >>> res = SelectionResult({"greedy": {"value": 0.5, "ci": [0.25, 0.75]}}, {}, {}, {}, 4, 2)
        >>> res.title()
        'Answer selection (K = 2, 4 questions)'
        """
        return None

    def markdown_frame(self) -> pd.DataFrame:
        """The DataFrame `to_markdown()` shows: `to_dataframe()` unless a result condenses it.

        Returns:
            A pandas DataFrame.

        >>> from tl_truth.studies import SelectionResult
        >>> res = SelectionResult({"greedy": {"value": 0.5, "ci": [0.25, 0.75]}}, {}, {}, {}, 4, 2)
        >>> res.markdown_frame().columns.tolist()
        ['group', 'n', 'greedy']
        """
        return self.to_dataframe()

    def markdown_notes(self) -> str:
        """Markdown after the table (conclusions, more tables); empty by default.

        Returns:
            Markdown text.

        >>> from tl_truth.studies import SelectionResult
        >>> res = SelectionResult({"greedy": {"value": 0.5, "ci": [0.25, 0.75]}}, {}, {}, {}, 4, 2)
        >>> res.markdown_notes()
        ''
        """
        return ""

    def to_markdown(self) -> str:
        """The result as markdown: the table of `markdown_frame()`, then `markdown_notes()`.

        Returns:
            Markdown text.

        >>> from tl_truth.studies import SelectionResult
        >>> res = SelectionResult({"greedy": {"value": 0.5, "ci": [0.25, 0.75]}}, {}, {}, {}, 4, 2)
        >>> print(res.to_markdown())
        | group | n | greedy |
        |---|---|---|
        | all | 4 | 0.500 [0.250, 0.750] |
        <BLANKLINE>
        """
        notes = self.markdown_notes()
        return markdown_table(self.markdown_frame()) + ("\n" + notes if notes else "")

    def _repr_markdown_(self) -> str:
        title = self.title()
        return (f"## {title}\n\n" if title else "") + self.to_markdown()

    # -- files -------------------------------------------------------------------------------

    def to_json(self) -> dict:
        """What `save` writes as JSON: `to_dict()` rounded to `json_digits` places, NaN as null.

        Keys in `json_raw_keys` are written as they are.

        Returns:
            A JSON-writable dict.

        >>> from tl_truth.studies import SelectionResult
        >>> res = SelectionResult({"greedy": {"value": 0.123456, "ci": [0.0, 1.0]}}, {}, {}, {}, 4, 2)
        >>> res.to_json()["accuracy"]["greedy"]["value"]
        0.1235
        """
        d = self.to_dict()
        return {
            k: v if k in self.json_raw_keys else json_safe(v, self.json_digits)
            for k, v in d.items()
        }

    def figure(self) -> Figure:
        """The figure `save` writes, built without pyplot (no backend change, nothing left open).

        Returns:
            A `matplotlib.figure.Figure`.

        >>> from tl_truth.studies import SelectionResult
        >>> res = SelectionResult({"greedy": {"value": 0.5, "ci": [0.25, 0.75]}}, {}, {}, {}, 4, 2)
        >>> type(res.figure()).__name__
        'Figure'
        """
        from matplotlib.figure import Figure

        fig = Figure(figsize=self.figsize)
        self.plot(ax=fig.add_subplot())
        return fig

    def save(self, out_dir: str | Path) -> Path:
        """Write `{result_name}.json`, `.md` and `{figure_name}.png` to `out_dir`.

        Args:
            out_dir: the directory (made if missing).

        Returns:
            `out_dir`, as a `Path`.

        >>> import tempfile
        >>> from tl_truth.studies import SelectionResult
        >>> res = SelectionResult({"greedy": {"value": 0.5, "ci": [0.25, 0.75]}}, {}, {}, {}, 4, 2)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     sorted(p.name for p in res.save(d).iterdir())
        ['selection.json', 'selection.md', 'selection.png']
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / f"{self.result_name}.json", self.to_json(), self.json_ensure_ascii)
        (out / f"{self.result_name}.md").write_text(self._repr_markdown_())
        png = out / f"{self.figure_name or self.result_name}.png"
        self.figure().savefig(png, dpi=self.dpi, bbox_inches="tight")
        return out

    @classmethod
    def load(cls, out_dir: str | Path) -> Any:
        """The result `save` wrote to `out_dir`.

        Args:
            out_dir: a directory `save` wrote to.

        Returns:
            The result, from its JSON (at the precision it was written with).

        >>> import tempfile
        >>> from tl_truth.studies import SelectionResult
        >>> res = SelectionResult({"greedy": {"value": 0.5, "ci": [0.25, 0.75]}}, {}, {}, {}, 4, 2)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     SelectionResult.load(res.save(d)) == res
        True
        """
        path = Path(out_dir) / f"{cls.result_name}.json"
        return cls.from_dict(read_json_file(path))
