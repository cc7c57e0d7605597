"""Every result writes the same three files: `name.json`, `name.md` and `name.png`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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
