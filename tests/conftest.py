from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from gantrain import config as config_mod
from gantrain.data.pack import pack
from gantrain.data.sources import open_source


def pytest_collection_modifyitems(config, items):
    """gpu-marked tests need CUDA; GANTRAIN_TEST_DEVICE=cpu runs them on CPU (scripts/gpu_check.sh --dry-run)."""
    if torch.cuda.is_available() or os.environ.get("GANTRAIN_TEST_DEVICE") == "cpu":
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def digits16(tmp_path_factory) -> Path:
    """scikit-learn's 1,797 real 8x8 digits packed at 16x16 into 9 shards of 200."""
    out = tmp_path_factory.mktemp("digits16")
    pack(open_source("digits"), out, 16, shard_size=200, progress=False)
    return out


def tiny_config(data_path: Path, **sections: dict[str, Any]) -> config_mod.Config:
    """A DCGAN small enough that a step takes milliseconds; sections override the defaults."""
    tree: dict[str, Any] = {
        "run": {"seed": 3},
        "data": {"path": str(data_path), "workers": 0},
        "model": {"name": "dcgan", "z_dim": 16, "channels": 8, "max_channels": 32},
        "train": {"kimg": 0.08, "batch": 16, "ema_kimg": 0.05, "ema_rampup": 0.5},
        "log": {"tick_kimg": 0.032, "image_kimg": 0.064, "snapshot_kimg": 0.08, "keep": 10, "progress": False},
    }
    for name, values in sections.items():
        tree.setdefault(name, {}).update(values)
    return config_mod.from_dict(tree)
