import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(min(2, torch.get_num_threads()))

from tiny import ARCHS, BACKENDS, tiny_model  # noqa: E402


@pytest.fixture(params=[(a, b) for a in ARCHS for b in BACKENDS], ids=lambda p: f"{p[0]}-{p[1]}")
def tiny(request):
    return tiny_model(*request.param)
