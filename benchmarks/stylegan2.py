"""StyleGAN2 training speed: img/s of full training steps and peak memory.

A "step" is what the loop runs per global batch: D main every step, lazy R1 every 16 D steps, G main,
path length every 4 G steps (batch_shrink 2), style mixing 0.9, EMA, through gantrain's Trainer. Each
setting runs in its own process (so its peak memory is its own), fed decoded batches from memory (this
measures the networks and the loop, not the reader), for 16 steps after 4 warm-up steps: the figure
covers exactly one R1 phase and four path-length phases, as a long run averages them.

On CPU the networks are narrowed (the settings below); on a GPU the reference's own settings are added:
paper256 (256x256, batch 64) and config-f (1024x1024, batch 32). Published anchor: the reference runs
StyleGAN2 at 256x256, batch 16, on one A100 at 12.53 s/kimg (StyleGAN3 repo, docs/configs.md).

    python benchmarks/stylegan2.py [--steps 16] [--precisions fp32,bf16] [--only NAME] [--ada]
    python benchmarks/stylegan2.py --modconv | --layout   # fused vs non-fused modconv; channels_last vs contiguous

--ada runs each setting a second time with ADA's bgc pipe at a fixed p of 0.5 (the cost of augmentation
inside a real training step: reals and fakes for D, fakes for G, the R1 reals).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
# name -> (resolution, channel_base, max_channels, z = w dim, mapping layers, batch)
CPU_SETTINGS = {
    "cpu-preset-32": (32, 512, 128, 64, 2, 32),  # configs/stylegan2-cpu.yaml
    "narrow-64": (64, 1024, 128, 128, 4, 16),
    "narrow-256": (256, 2048, 128, 128, 4, 8),
}
GPU_SETTINGS = {
    "paper256": (256, 16384, 512, 512, 8, 64),
    "config-f-1024": (1024, 32768, 512, 512, 8, 32),
}


ADA = ["augment.name=ada", "augment.p=0.5", "augment.target=null"]  # --ada: the bgc pipe at a fixed p of 0.5


def one(name: str, precision: str, steps: int, data_root: Path, ada: bool = False) -> dict:
    from gantrain import config as config_mod
    from gantrain.data.pack import pack
    from gantrain.data.sources import open_source
    from gantrain.data.stream import read_manifest
    from gantrain.train.bench import time_steps
    from gantrain.train.loop import resolve

    resolution, base, cmax, zdim, mapping, batch = {**CPU_SETTINGS, **GPU_SETTINGS}[name]
    data = data_root / f"digits-{resolution}"
    if not (data / "manifest.json").exists():  # the manifest gives the resolution; the images come from memory
        pack(open_source("digits"), data, resolution, shard_size=2000, progress=False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = config_mod.load(REPO / "configs" / "stylegan2-cpu.yaml", [
        f"data.path={data}", "data.workers=0", "eval.metrics=none", f"model.channel_base={base}",
        f"model.max_channels={cmax}", f"model.z_dim={zdim}", f"model.w_dim={zdim}", f"model.mapping_layers={mapping}",
        f"train.batch={batch}", f"engine.precision={precision}", f"engine.device={device}", "log.progress=false",
        *(ADA if ada else ["augment.name=none"])])
    manifest = read_manifest(data)
    return {"name": name, **time_steps(resolve(cfg, manifest, 1), manifest, device, precision, 4, steps)}


def modconv(channel_base: int, rounds: int = 2, passes: int = 5) -> None:
    """The reference's non-fused modulated convolution (what training uses) against the grouped one (what
    sampling uses): G+D forward and backward at batch 32 on the cpu preset's networks, alternating rounds."""
    from gantrain import config as config_mod
    from gantrain import models
    from gantrain.models import stylegan2

    cfg = config_mod.load(REPO / "configs" / "stylegan2-cpu.yaml", [f"model.channel_base={channel_base}"])
    torch.manual_seed(0)
    G, D = models.build(cfg.model, models.DataSpec(32, 1, 0))
    z = torch.randn(32, cfg.model.z_dim)
    real = stylegan2.modulated_conv2d
    times: dict[bool, list[float]] = {True: [], False: []}
    try:
        for _ in range(rounds):
            for fused in (True, False):
                stylegan2.modulated_conv2d = lambda *a, fused_=fused, **k: real(*a, **{**k, "fused": fused_})
                D(G(z)).sum().backward()  # warm-up
                start = time.perf_counter()
                for _ in range(passes):
                    D(G(z)).sum().backward()
                times[fused].append((time.perf_counter() - start) / passes)
    finally:
        stylegan2.modulated_conv2d = real
    grouped, batched = min(times[True]), min(times[False])
    print(f"modulated conv, channel_base {channel_base}: grouped {grouped * 1000:.0f} ms ({32 / grouped:.0f} img/s)  "
          f"non-fused {batched * 1000:.0f} ms ({32 / batched:.0f} img/s)  ratio {grouped / batched:.2f}  "
          f"(G+D forward+backward, batch 32, best of {rounds} rounds x {passes})")


def layout(channel_base: int, resolution: int, batch: int, rounds: int = 3, passes: int = 4) -> None:
    """channels_last against the default contiguous layout: G+D forward and backward (the non-fused
    training path) with every 4-d weight, the constant input and the images in each layout, alternating
    rounds, the outputs compared."""
    from gantrain import config as config_mod
    from gantrain import models

    cfg = config_mod.load(REPO / "configs" / "stylegan2-cpu.yaml", [f"model.channel_base={channel_base}"])
    torch.manual_seed(0)
    G, D = models.build(cfg.model, models.DataSpec(resolution, 1, 0))
    z = torch.randn(batch, cfg.model.z_dim)
    formats = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    times: dict[str, list[float]] = {name: [] for name in formats}
    outputs = {}
    for _ in range(rounds):
        for name in times:
            fmt = formats[name]
            G.to(memory_format=fmt), D.to(memory_format=fmt)
            for block in G.synthesis_net.blocks.values():  # the 4x4 constant is 3-d: its copies are made 4-d
                if hasattr(block, "const"):
                    block.const.data = block.const.data.contiguous()

            def step():
                torch.manual_seed(1)
                img = G(z).contiguous(memory_format=fmt)
                out = D(img)
                out.sum().backward()
                return out.detach()

            outputs[name] = step()  # warm-up
            start = time.perf_counter()
            for _ in range(passes):
                step()
            times[name].append((time.perf_counter() - start) / passes)
    a, b = min(times["contiguous"]), min(times["channels_last"])
    diff = (outputs["contiguous"] - outputs["channels_last"]).abs().max().item()
    print(f"layout, {resolution}x{resolution} channel_base {channel_base}, batch {batch}: "
          f"contiguous {a * 1000:.0f} ms  channels_last {b * 1000:.0f} ms  ratio {b / a:.2f}  "
          f"(G+D forward+backward, best of {rounds} rounds x {passes}; D scores differ by {diff:.1e})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--only", help="one setting by name")
    parser.add_argument("--modconv", action="store_true", help="only the modulated-convolution comparison")
    parser.add_argument("--layout", action="store_true", help="only channels_last against contiguous")
    parser.add_argument("--ada", action="store_true", help="each setting also with ADA (bgc, p 0.5)")
    parser.add_argument("--one-ada", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one", nargs=2, metavar=("NAME", "PRECISION"), help=argparse.SUPPRESS)
    parser.add_argument("--data-root", default=str(Path(tempfile.gettempdir()) / "gantrain-bench-data"))
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], args.steps, Path(args.data_root), args.one_ada)))
        return
    if args.modconv:
        for base in (512, 2048):
            modconv(base)
        return
    if args.layout:
        for base, resolution, batch in ((512, 32, 32), (2048, 32, 32), (1024, 64, 16)):
            layout(base, resolution, batch)
        return
    names = [args.only] if args.only else [*CPU_SETTINGS, *(GPU_SETTINGS if torch.cuda.is_available() else {})]
    print(f"StyleGAN2 full training steps ({args.steps} after 4 warm-up; R1 every 16, path length every 4), "
          f"{torch.get_num_threads()} torch threads")
    print(f"{'setting':>18} {'prec':>5} {'res':>5} {'batch':>5} {'G params':>11} {'D params':>11} {'img/s':>8} "
          f"{'s/kimg':>8} {'peak MiB':>9}")
    for name in names:
        variants = [(p, a) for p in args.precisions.split(",") for a in ([False, True] if args.ada else [False])]
        for precision, ada in variants:
            label = name + (" +ada" if ada else "")
            out = subprocess.run([sys.executable, __file__, "--one", name, precision, "--steps", str(args.steps),
                                  "--data-root", args.data_root, *(["--one-ada"] if ada else [])],
                                 capture_output=True, text=True, cwd=REPO)
            if out.returncode:
                print(f"{label:>18} {precision:>5}  failed: {out.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{label:>18} {precision:>5} {r['resolution']:>5} {r['batch']:>5} {r['params_G']:>11,} "
                  f"{r['params_D']:>11,} {r['img_per_sec']:>8.1f} {r['sec_per_kimg']:>8.1f} {r['peak_mem_mib']:>9.0f}")
    print("memory: peak CUDA allocated on a GPU, peak RSS of the process on CPU")


if __name__ == "__main__":
    main()
