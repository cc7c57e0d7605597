import os
import sys

# No Hugging Face hub here: a name that is not a local model fails at once, not after retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# `make test` runs two pytest-xdist workers on two cores: one thread each, and the same for the
# processes they start (CLI subprocesses, notebook kernels), so nothing oversubscribes the cores.
XDIST = "PYTEST_XDIST_WORKER" in os.environ
if XDIST:
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(1 if XDIST else min(2, torch.get_num_threads()))

from tiny import ARCHS, BACKENDS, tiny_model  # noqa: E402


@pytest.fixture(params=[(a, b) for a in ARCHS for b in BACKENDS], ids=lambda p: f"{p[0]}-{p[1]}")
def tiny(request):
    return tiny_model(*request.param)


# Longest first. pytest-xdist hands tests out as workers free up, so a long test handed out
# last runs on alone while the other worker idles: collected in file order, the tutorials
# (7 of the suite's 8.5 minutes of wall time on a fresh clone) started last. Groups of several
# tests (`xdist_group`) are handed out first anyway.
SLOW_FIRST = (
    "tests/test_tutorials.py::test_tutorial_runs[04",
    "tests/test_tutorials.py::test_tutorial_runs[03",
    "tests/test_tutorials.py::test_tutorial_runs[02",
    "tests/studies/test_kill_resume.py",
    "tests/test_tutorials.py::test_tutorial_runs[01",
    "tests/studies/test_main_job.py::test_cli_run_on_smollm2",
    "tests/test_parallel.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        return next(
            (i for i, prefix in enumerate(SLOW_FIRST) if item.nodeid.startswith(prefix)),
            len(SLOW_FIRST),
        )

    items.sort(key=rank)  # stable: everything else keeps its order
