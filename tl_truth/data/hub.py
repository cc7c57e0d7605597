"""The paper's datasets from the Hugging Face hub, when it is reachable.

The only loader that downloads: `load_hub` maps our format names (and the hub's) to hub
repositories and runs their rows through the native converters of `tl_truth.data.native`, so a
hub dataset and its local file give the same questions. `hub_reachable` checks first, so that an
offline machine fails in well under a second with a message saying what to do instead.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

from tl_truth.data.native import (
    IMDB_LABELS,
    NLI_LABELS,
    _convert_hotpotqa,
    _convert_imdb,
    _convert_mnli,
    _convert_nq,
    _convert_triviaqa,
    _convert_winogrande,
)
from tl_truth.data.questions import QADataset
from tl_truth.data.rows import Converter, _Builder

__all__ = ["HUB_DATASETS", "hub_reachable", "load_hub"]

# --------------------------------------------------------------------------- the hub

# Our format name -> (hub repository, config): the HF versions of the paper's datasets.
HUB_DATASETS: dict[str, tuple[str, str | None]] = {
    "triviaqa": ("mandarjoshi/trivia_qa", "rc.nocontext"),
    "nq": ("google-research-datasets/nq_open", None),
    "hotpotqa": ("hotpotqa/hotpot_qa", "distractor"),
    "mnli": ("nyu-mll/glue", "mnli"),
    "imdb": ("stanfordnlp/imdb", None),
    "winogrande": ("allenai/winogrande", "winogrande_xl"),
}
_HUB_SPLITS = {"mnli": {"validation": "validation_matched", "test": "test_matched"}}
_HUB_CONVERTERS: dict[str, tuple[Converter, tuple[str, ...]]] = {
    "triviaqa": (_convert_triviaqa, ()),
    "nq": (_convert_nq, ()),
    "hotpotqa": (_convert_hotpotqa, ()),
    "mnli": (_convert_mnli, NLI_LABELS),
    "imdb": (_convert_imdb, IMDB_LABELS),
    "winogrande": (_convert_winogrande, ()),
}
# Accept our names, the repository ids and their short names ("trivia_qa", "glue"...).
_HUB_NAMES = {
    alias: fmt
    for fmt, (repo, _) in HUB_DATASETS.items()
    for alias in (fmt, repo, repo.rsplit("/", 1)[-1])
}


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when offline mode is set or the hub endpoint does not answer within `timeout`."""
    if _env_true("HF_HUB_OFFLINE") or _env_true("HF_DATASETS_OFFLINE"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        with urllib.request.urlopen(
            urllib.request.Request(endpoint, method="HEAD"), timeout=timeout
        ):
            return True
    except urllib.error.HTTPError:
        return True  # an HTTP error status is still an answer
    except (OSError, ValueError):
        return False


def load_hub(name: str, split: str, *, limit: int | None = None) -> QADataset:
    """The HF hub version of a dataset, through `datasets.load_dataset`, when reachable.

    `name` is a format name ("triviaqa") or the hub name ("trivia_qa"). Raises RuntimeError
    when the hub is unreachable: download the files and use `load_dataset_spec("fmt:path")`.
    """
    fmt = _HUB_NAMES.get(name)
    if fmt is None:
        raise ValueError(f"unknown hub dataset {name!r}; known: {', '.join(HUB_DATASETS)}")
    repo, config = HUB_DATASETS[fmt]
    if not hub_reachable():
        raise RuntimeError(
            f"the Hugging Face hub is unreachable (offline or no network), so {repo} cannot be "
            f"loaded; download it and pass a local path as '{fmt}:<path>' instead"
        )
    from datasets import load_dataset  # heavy import: only when the hub is used

    hub_split = _HUB_SPLITS.get(fmt, {}).get(split, split)
    # Streaming reads only the first rows when a limit is given.
    rows = load_dataset(repo, config, split=hub_split, streaming=limit is not None)
    convert, candidates = _HUB_CONVERTERS[fmt]
    b = _Builder(
        fmt, f"hf:{repo}" + (f"/{config}" if config else "") + f"[{hub_split}]", limit, candidates
    )
    convert(rows, b)
    return b.build()
