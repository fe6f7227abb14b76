"""Non-finite values never outlive the step that made them.

A diverging run (too high a learning rate, an fp16 overflow the scaler missed, a batch-norm variance that
blew up in a forward pass) must not leave inf/NaN in the weights, G_ema or a checkpoint. The guard keeps a
copy of everything a step changes -- parameters, buffers and optimizer state of both networks -- in
buffers allocated once, checks them after the step and puts the copy back when anything is non-finite.
Cost: one extra copy of that state in device memory and one device-to-device copy per step.
"""

from __future__ import annotations

import torch

from gantrain.engines.base import Net


class DivergedError(RuntimeError):
    """The run kept producing non-finite values: stop with one line instead of training on garbage."""


def finite(tensors: list[torch.Tensor]) -> bool:
    """All floating-point values finite (one device sync in the common case, whatever the number of tensors).

    Fast path: a sum is finite only if every term is (inf and NaN propagate through addition), and a sum
    reads each tensor once without allocating a mask as large as it; that is 5x cheaper than isfinite().all()
    per tensor on CPU. A non-finite sum may still come from finite values that overflow when added up, so
    only then is the exact element-wise check run."""
    floats = [t for t in tensors if t.is_floating_point() and t.numel()]
    if not floats:
        return True
    if bool(torch.isfinite(torch.stack([t.sum(dtype=torch.float32) for t in floats])).all()):
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in floats]).all())


def nonfinite_names(named: dict[str, torch.Tensor]) -> list[str]:
    """Names of the tensors holding inf/NaN (for error messages and refused checkpoints)."""
    return [k for k, t in named.items() if isinstance(t, torch.Tensor) and t.is_floating_point()
            and not bool(torch.isfinite(t).all())]


class StepGuard:
    """keep(nets) before a step, finite(nets) after it, revert(nets) if not. NETS may be new wrappers of
    the same modules from one step to the next (a growing model is re-wrapped)."""

    def __init__(self) -> None:
        self.backup: list[list[torch.Tensor]] = []

    def keep(self, nets: list[Net]) -> None:
        """Copy the current state (allocating only when the set of tensors changed, e.g. Adam's first step)."""
        if len(self.backup) != len(nets):
            self.backup = [[] for _ in nets]
        with torch.no_grad():
            for i, net in enumerate(nets):
                tensors = [t.detach() for t in net.state_tensors()]
                if [(t.shape, t.dtype) for t in tensors] == [(b.shape, b.dtype) for b in self.backup[i]]:
                    torch._foreach_copy_(self.backup[i], tensors)
                else:
                    self.backup[i] = [t.clone() for t in tensors]

    def finite(self, nets: list[Net]) -> bool:
        return finite([t for net in nets for t in net.state_tensors()])

    def revert(self, nets: list[Net]) -> None:
        """Back to the kept state. State created during the step (an optimizer's first moments and step
        count, which come after the parameters and buffers) is zeroed: what a fresh optimizer holds."""
        with torch.no_grad():
            for backup, net in zip(self.backup, nets):
                for i, t in enumerate(net.state_tensors()):
                    if i < len(backup) and backup[i].shape == t.shape:
                        t.copy_(backup[i])
                    else:
                        t.zero_()
