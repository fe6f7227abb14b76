"""One process, one device: the reference every distributed engine must agree with."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from gantrain.engines.base import Engine, Net


class SingleNet(Net):
    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer):
        self.module = self.raw = module
        self.optimizer = optimizer

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def no_sync(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


class SingleEngine(Engine):
    def __init__(self, device: str = "auto"):
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)

    def setup(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> Net:
        return SingleNet(module.to(self.device), optimizer)

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor
