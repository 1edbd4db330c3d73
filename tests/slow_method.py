"""A derainer for the executor tests: the identity, slowed down, that writes the id of each
process it runs in to ``$RESGUIDE_TEST_PIDS`` (so a test can kill a worker mid-shard)."""
from __future__ import annotations

import os
import time
from pathlib import Path

from torch import nn

from models.registry import REGISTRY, register

NAME = "test_slow_identity"


class SlowIdentity(nn.Module):
    def forward(self, x):
        folder = os.environ.get("RESGUIDE_TEST_PIDS")
        if folder:
            (Path(folder) / str(os.getpid())).touch()
        time.sleep(float(os.environ.get("RESGUIDE_TEST_DELAY", "0.15")))
        return x.clone()


def build(weights, profile, data_root):
    return SlowIdentity().eval(), {"tag": "none"}


def ensure_registered() -> None:
    """Register the method (a worker registers it by importing this module)."""
    if NAME not in REGISTRY:
        register(NAME, paper_name="slow identity (tests)", version="1")(build)


ensure_registered()
