"""Every result writes the same three files: `name.json`, `name.md` and `name.png`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def json_safe(x: Any) -> Any:
    """NaN -> null (strict JSON), floats rounded to 4 places, numpy scalars -> Python,
    tuples -> lists."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if np.isnan(x) else round(float(x), 4)
    if isinstance(x, np.integer):
        return int(x)
    return x


def save_outputs(out_dir: str | Path, name: str, doc: dict, markdown: str, figure: Any) -> Path:
    """Write `doc` as JSON, `markdown`, and `figure` (a Figure or an Axes) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False))
    (out / f"{name}.md").write_text(markdown)
    fig = getattr(figure, "figure", figure)  # an Axes knows its Figure
    fig.savefig(out / f"{name}.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out
