"""Cost of the augmentation pipes per image against a full training step of the DCGAN quickstart.

    .venv/bin/python benchmarks/augment.py [--threads 2]

Prints ms per image of ADA's `bgc` (p = 0.5 and 1) and DiffAugment at 32, 64 and 256 pixels (one
channel, as the bundled digits; forward only, and forward + backward to the input), and the ratio to one
DCGAN quickstart training step per image measured in the same run.
"""

from __future__ import annotations

import argparse
import time

import torch

from gantrain.augment import Augment, Draws


def per_image_ms(fn, batch: int, repeats: int = 5) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats / batch * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from gantrain import models
    from gantrain.config import ModelConfig

    spec = models.DataSpec(32, 1, 0)
    G, D = models.build(ModelConfig(name="dcgan", z_dim=64, channels=16), spec)
    opt_g, opt_d = torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())
    batch = 64
    real = torch.rand(batch, 1, 32, 32) * 2 - 1

    def step():  # D step and G step, the quickstart's non-saturating loss
        fake = G(torch.randn(batch, 64))
        loss = torch.nn.functional.softplus(D(fake.detach())).mean() + torch.nn.functional.softplus(-D(real)).mean()
        opt_d.zero_grad()
        loss.backward()
        opt_d.step()
        loss = torch.nn.functional.softplus(-D(G(torch.randn(batch, 64)))).mean()
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()

    step_ms = per_image_ms(step, batch)
    print(f"DCGAN quickstart step (D + G, batch {batch}, 32x32): {step_ms:.3f} ms/image")
    gen = torch.Generator().manual_seed(0)
    for size, n in ((32, 64), (64, 32), (256, 8)):
        x = torch.rand(n, 1, size, size) * 2 - 1
        ada = Augment("ada", pipe="bgc")
        for label, aug, p in (("ada bgc p=0.5", ada, 0.5), ("ada bgc p=1", ada, 1.0),
                              ("diffaugment", Augment("diffaugment"), 0.0)):
            fwd = per_image_ms(lambda: aug(x, p, Draws(gen)), n)

            def both():
                y = aug(x.clone().requires_grad_(True), p, Draws(gen))
                y.sum().backward()

            bwd = per_image_ms(both, n)
            ratio = f", {fwd / step_ms:.2f}x the 32x32 step" if size == 32 else ""
            print(f"{size:4d}^2  {label:14s} forward {fwd:.3f} ms/image, forward+backward {bwd:.3f} ms/image{ratio}")


if __name__ == "__main__":
    main()
