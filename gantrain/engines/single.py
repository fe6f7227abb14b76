"""One process, one device: the reference every distributed engine must agree with."""

from __future__ import annotations

import torch
from torch import nn

from gantrain.engines.base import Engine, Net, OptimizerFactory


def pick_device(device: str, local_rank: int = 0) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local_rank}"
    return torch.device(device)


class SingleEngine(Engine):
    def __init__(self, device: str = "auto", precision: str = "fp32", compile: bool = False):
        self.device = pick_device(device)
        self.precision, self.compile = precision, compile

    def setup(self, module: nn.Module, make_optimizer: OptimizerFactory) -> Net:
        module = module.to(self.device)
        return self._compiled(Net(module, module, make_optimizer(module.parameters()), self._scaler()))
