"""Which part of a CPU preset fails: its G, its D, or the recipe (docs/benchmarks.md).

    # train configs/stylegan2-cpu.yaml with one network replaced by the DCGAN quickstart's (16 feature maps
    # at 32x32, like the preset's), everything else as the preset: loss, lazy R1, Adam, EMA, the loop
    .venv/bin/python benchmarks/probe.py swap G --run-dir runs/probe-swapG train.kimg=8 loss.pl.weight=0
    .venv/bin/python benchmarks/probe.py swap D --run-dir runs/probe-swapD train.kimg=8
    # the same for the BigGAN cpu preset (class-conditional: the DCGAN nets condition by concatenation)
    .venv/bin/python benchmarks/probe.py swap D --d-norm none --preset biggan-cpu --run-dir runs/probe-bgD train.kimg=30
    # fit G alone: N fixed latents to N MNIST digits by L2 regression (no D), mean squared error per 100 steps
    .venv/bin/python benchmarks/probe.py fit --family stylegan2 --lr 0.0025 --images 64 --steps 400

`swap none --no-noise` keeps both StyleGAN2 networks but turns G's noise inputs off. `swap G` needs
`loss.pl.weight=0` (the DCGAN G has no mapping network); `swap D --d-norm none|batch` picks the
DCGAN D's normalization, `swap G --g-norm` the G's; `--preset biggan-cpu` swaps in the BigGAN cpu preset
(conditional DCGAN nets: G with a class embedding next to z, D by `--d-conditioning`, concat by default;
the preset's spectral norm applies to a swapped-in net too, which cripples the DCGAN G: use `swap D` there).
The fit reports the MSE of predicting the mean image as the baseline to beat.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def swap(preset: str, which: str, norm: str, no_noise: bool, d_conditioning: str, argv: list[str]) -> int:
    from gantrain import models
    from gantrain.cli import main
    from gantrain.models.dcgan import DCGANDiscriminator, DCGANGenerator
    from gantrain.models.stylegan2 import SynthesisLayer

    family = preset.split("-")[0]
    build = models.MODELS[family]

    def swapped(cfg, spec):
        G, D = build(cfg, spec)
        for layer in G.modules():
            if no_noise and isinstance(layer, SynthesisLayer):
                layer.use_noise = False
        conditional = cfg.conditional and spec.num_classes > 0
        if which == "none":
            return G, D
        if which == "D":
            return G, DCGANDiscriminator(spec, 16, 512, conditional, norm, d_conditioning, "none", 4, 32)
        return DCGANGenerator(spec, cfg.z_dim, 16, 512, conditional, norm), D

    models.MODELS[family] = swapped
    return main(["train", str(REPO / "configs" / f"{preset}.yaml"), *argv])


def fit(family: str, lr: float, images: int, steps: int, beta1: float) -> None:
    import numpy as np

    from gantrain import config, models
    from gantrain.data.sources import open_source

    torch.manual_seed(0)
    preset = {"stylegan2": "stylegan2-cpu", "dcgan": "quickstart"}[family]
    cfg = config.load(REPO / "configs" / f"{preset}.yaml")
    G, _ = models.build(cfg.model, models.DataSpec(32, 1, 0))
    G.train()
    if hasattr(G, "style_mixing"):
        G.style_mixing = 0.0
    source = open_source("mnist5k")
    digits = [np.asarray(source.loader(i).convert("L"), dtype=np.float32) for i in range(images)]
    x = torch.tensor(np.stack(digits))[:, None] / 127.5 - 1
    x = torch.nn.functional.pad(x, [(32 - x.shape[-1]) // 2] * 4, value=-1.0)
    z = torch.randn(images, G.z_dim)
    opt = torch.optim.Adam(G.parameters(), lr=lr, betas=(beta1, 0.99))
    print(f"{family} G, {sum(p.numel() for p in G.parameters()):,} parameters, {images} digits, lr {lr}, "
          f"betas ({beta1}, 0.99); MSE of the mean image {float(x.var(0, unbiased=False).mean()):.4f}")
    for step in range(steps + 1):
        loss = (G(z) - x).square().mean()
        if step % 100 == 0:
            print(f"step {step:5d}  mse {loss.item():.4f}", flush=True)
        opt.zero_grad()
        loss.backward()
        opt.step()


def parse() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("swap", help="train the preset with G or D replaced by DCGAN's")
    s.add_argument("which", choices=["G", "D", "none"])
    s.add_argument("--preset", default="stylegan2-cpu", choices=["stylegan2-cpu", "biggan-cpu"])
    s.add_argument("--d-conditioning", default="concat", choices=["concat", "projection"],
                   help="how the DCGAN D of `swap D` conditions on the class (conditional presets)")
    s.add_argument("--no-noise", action="store_true", help="StyleGAN2 G without its per-pixel noise inputs")
    s.add_argument("--g-norm", default="batch", choices=["batch", "none"])
    s.add_argument("--d-norm", default="batch", choices=["batch", "none"])
    f = sub.add_parser("fit", help="regress G's outputs for fixed latents onto digits")
    f.add_argument("--family", default="stylegan2", choices=["stylegan2", "dcgan"])
    f.add_argument("--lr", type=float, default=0.0025)
    f.add_argument("--beta1", type=float, default=0.0)
    f.add_argument("--images", type=int, default=64)
    f.add_argument("--steps", type=int, default=400)
    return parser.parse_known_args()


if __name__ == "__main__":
    args, rest = parse()
    if args.cmd == "swap":
        sys.exit(swap(args.preset, args.which, args.g_norm if args.which == "G" else args.d_norm, args.no_noise,
                      args.d_conditioning, rest))
    fit(args.family, args.lr, args.images, args.steps, args.beta1)
