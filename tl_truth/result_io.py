"""Writing results: strict JSON, markdown tables and figures, without touching pyplot's state.

The pieces every result's `save` (`tl_truth.results.Result`) is built from, also usable on
their own: `json_safe` / `write_json` (NaN as null, floats rounded at write time),
`markdown_table` (a GitHub table of a DataFrame), `pyplot_axes` (draw on a given Axes or a new
inline figure), `save_figure` and `save_outputs` (PNG without changing the matplotlib backend).
They live apart from the `Result` protocol so that protocol reads on its own;
`tl_truth.results` re-exports them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes


def json_safe(x: Any, digits: int | None = 4) -> Any:
    """A value made strictly JSON-writable, recursively through dicts, lists and tuples.

    Args:
        x: the value.
        digits: places to round floats to (None: not rounded).

    Returns:
        `x` with NaN as None (null), floats rounded, numpy scalars as Python ones and tuples
        as lists.

    >>> json_safe({"auc": np.float64(0.912345), "ci": (float("nan"), 1), "n": np.int64(3)})
    {'auc': 0.9123, 'ci': [None, 1], 'n': 3}
    """
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
    """Write `doc` as indented JSON (no trailing newline).

    Args:
        path: the file to write.
        doc: a JSON-writable value (see `json_safe`).
        ensure_ascii: escape non-ASCII characters.

    Returns:
        `path`, as a `Path`.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     text = write_json(Path(d) / "x.json", {"city": "Zürich"}).read_text()
    >>> print(text)
    {
      "city": "Zürich"
    }
    """
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
    """A GitHub markdown table of `df`'s columns (the index is left out).

    Args:
        df: the table.
        floatfmt: the format of floats.

    Returns:
        The markdown, one line per row; missing values are "-" and "|" in text is escaped.

    >>> import pandas as pd
    >>> print(markdown_table(pd.DataFrame({"method": ["a|b"], "auc": [0.91234], "n": [None]})))
    | method | auc | n |
    |---|---|---|
    | a\\|b | 0.912 | - |
    <BLANKLINE>
    """
    cols = [str(c) for c in df.columns]
    lines = [
        "| " + " | ".join(_cell(c, floatfmt) for c in cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for row in df.itertuples(index=False, name=None):
        lines.append("| " + " | ".join(_cell(v, floatfmt) for v in row) + " |")
    return "\n".join(lines) + "\n"


def pyplot_axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    """The Axes to draw on: `ax`, or a new pyplot figure's (it shows inline in a notebook).

    Args:
        ax: an Axes, or None.
        figsize: the size of the new figure when `ax` is None.

    Returns:
        An Axes.

    >>> from matplotlib.figure import Figure
    >>> ax = Figure().add_subplot()
    >>> pyplot_axes(ax, (4, 3)) is ax
    True
    """
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)[1]


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Write a Figure (or an Axes' figure) as PNG; closes it if pyplot manages it.

    The matplotlib backend is left as it is.

    Args:
        fig: a Figure or an Axes.
        path: the PNG file.
        dpi: its resolution.

    Returns:
        `path`, as a `Path`.

    >>> import tempfile
    >>> from matplotlib.figure import Figure
    >>> with tempfile.TemporaryDirectory() as d:
    ...     png = save_figure(Figure(figsize=(2, 2)), Path(d) / "f.png")
    ...     png.stat().st_size > 0
    True
    """
    fig = getattr(fig, "figure", fig)  # an Axes knows its Figure
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    if getattr(fig.canvas, "manager", None) is not None:  # a pyplot figure: release it
        import matplotlib.pyplot as plt

        plt.close(fig)
    return Path(path)


def save_outputs(out_dir: str | Path, name: str, doc: dict, markdown: str, figure: Any) -> Path:
    """Write `doc` as JSON, `markdown`, and `figure` (a Figure or an Axes) as PNG.

    Kept for callers outside the `Result` protocol; the backend is not changed.

    Args:
        out_dir: the directory (made if missing).
        name: the files' stem (`{name}.json`, `.md`, `.png`).
        doc: a JSON-writable dict.
        markdown: the markdown text.
        figure: a Figure or an Axes.

    Returns:
        `out_dir`, as a `Path`.

    >>> import tempfile
    >>> from matplotlib.figure import Figure
    >>> with tempfile.TemporaryDirectory() as d:
    ...     out = save_outputs(d, "x", {"a": 1}, "# x", Figure(figsize=(2, 2)))
    ...     sorted(p.name for p in out.iterdir())
    ['x.json', 'x.md', 'x.png']
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{name}.json", doc)
    (out / f"{name}.md").write_text(markdown)
    save_figure(figure, out / f"{name}.png")
    return out


def read_json_file(path: str | Path) -> Any:
    """`json.loads` of a file; a file that is not JSON raises ValueError naming it.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = (Path(d) / "x.json").write_text("{")
    ...     read_json_file(Path(d) / "x.json")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: .../x.json: not valid JSON (truncated or corrupt?): ...
    """
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON (truncated or corrupt?): {e}") from e


def read_tensors(path: str | Path) -> dict:
    """`safetensors.torch.load_file`; a truncated or corrupt file raises ValueError naming it.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = (Path(d) / "x.safetensors").write_bytes(b"\\x10\\x00")
    ...     read_tensors(Path(d) / "x.safetensors")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: .../x.safetensors: not a readable safetensors file (truncated or corrupt?): ...
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise ValueError(
            f"{path}: not a readable safetensors file (truncated or corrupt?): {e}"
        ) from e
