"""The `gantrain` command: argument handling only; the work happens in the library."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from gantrain import config as config_mod


def _user_errors() -> tuple[type[Exception], ...]:
    from gantrain.data.pack import PackError
    from gantrain.data.sources import SourceError
    from gantrain.data.stream import DataError
    from gantrain.train.checkpoint import CheckpointError

    return (config_mod.ConfigError, DataError, PackError, SourceError, CheckpointError)


def cmd_train(args: argparse.Namespace) -> int:
    from gantrain.train.loop import run

    cfg = config_mod.load(args.config, args.overrides)
    run_dir = Path(args.run_dir or Path("runs") / Path(args.config).stem)
    if args.nproc > 1 and "RANK" not in os.environ:
        if cfg.engine.name == "single":
            raise config_mod.ConfigError("engine.name", f"--nproc {args.nproc} needs a distributed engine "
                                         "(engine.name=ddp)")
        return launch_local(args, run_dir)
    result = run(cfg, run_dir, resume=args.resume)
    if int(os.environ.get("RANK", 0)) != 0:
        return 0
    print(f"run dir: {run_dir}  kimg: {result['nimg'] / 1000:.2f}  checkpoint: {result['checkpoint']}")
    toy = {k: v for k, v in result["scalars"].items() if k.startswith("Toy/")}
    if toy:
        print("final toy figures: " + "  ".join(f"{k[4:]} {v:.4g}" for k, v in sorted(toy.items())))
    if result["interrupted"]:
        print("stopped by signal after checkpointing; continue with --resume auto")
    return 0


def launch_local(args: argparse.Namespace, run_dir: Path) -> int:
    """N ranks on this machine through torchrun itself (rendezvous on localhost); non-zero if any fails."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
               "-m", "gantrain", "train", args.config, *args.overrides, "--run-dir", str(run_dir)]
    if args.resume:
        command += ["--resume", args.resume]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max((os.cpu_count() or 1) // args.nproc, 1)))
    return subprocess.call(command, env=env)


def cmd_pack(args: argparse.Namespace) -> int:
    from gantrain.data.pack import pack
    from gantrain.data.sources import open_source

    manifest = pack(open_source(args.source, args.labels), args.out_dir, args.resolution,
                    shard_size=args.shard_size, image_format=args.format, channels=args.channels,
                    seed=args.seed, force=args.force)
    print(f"{manifest['num_images']} images in {len(manifest['shards'])} shards at "
          f"{manifest['resolution']}x{manifest['resolution']}x{manifest['channels']}, "
          f"{manifest['num_classes']} classes, {manifest['skipped']['count']} skipped -> {args.out_dir}")
    return 0


def load_generator(path: str):
    """G_ema from a checkpoint (.pt) or its safetensors export, ready for sampling."""
    import torch
    from safetensors import safe_open

    from gantrain import models
    from gantrain.train import checkpoint

    if path.endswith(".safetensors"):
        from gantrain.train.checkpoint import CheckpointError

        try:
            with safe_open(path, "pt") as f:
                meta = {k: json.loads(v) for k, v in f.metadata().items()}
                weights = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable safetensors export ({exc})") from None
        cfg_dict, spec_dict, nimg = meta["config"], meta["spec"], meta["nimg"]
    else:
        state = checkpoint.load(path)
        cfg_dict, spec_dict, weights = state["config"], state["spec"], state["G_ema"]
        nimg = state["counters"]["nimg"]
    cfg = config_mod.from_dict(cfg_dict)
    G, _ = models.build(cfg.model, models.DataSpec(**spec_dict))
    G.load_state_dict(weights)
    if hasattr(G, "set_stage"):  # a growing model samples at the stage it had reached
        from gantrain.train.schedule import Schedule

        stage = Schedule(cfg, spec_dict["resolution"]).at(nimg)
        G.set_stage(stage.resolution, stage.alpha)
    return G.eval().requires_grad_(False).to(torch.device("cpu"))


def cmd_sample(args: argparse.Namespace) -> int:
    from gantrain.sampling import generate, latents, make_grid, save_png, to_uint8

    G = load_generator(args.checkpoint)
    if args.truncation is not None and not getattr(G, "supports_truncation", False):
        raise config_mod.ConfigError("--truncation", f"{type(G).__name__} has no truncation trick")
    if args.class_index is not None and not 0 <= args.class_index < max(G.num_classes, 1):
        raise config_mod.ConfigError("--class", f"{args.class_index} is not a class of this model "
                                     f"({G.num_classes or 'unconditional'})")
    cols = args.cols or math.ceil(math.sqrt(args.n))
    z, c = latents(args.n, G, args.seed, rows=math.ceil(args.n / cols), class_index=args.class_index)
    samples = generate(G, z, c)
    if samples.dim() != 4:
        raise config_mod.ConfigError("checkpoint", f"{args.checkpoint} is a toy model: it makes points, not images "
                                     "(its run dir has them as scatter plots, fakes-*.png)")
    save_png(make_grid(to_uint8(samples), cols), args.out)
    print(f"wrote {args.n} samples to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gantrain", description="Train GANs at scale.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train from a YAML config")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.kimg=2 model.channels=64")
    p.add_argument("--run-dir", help="where checkpoints, logs and TensorBoard go (default runs/<config name>)")
    p.add_argument("--resume", help="'auto' (latest checkpoint of the run dir, if any) or a checkpoint path")
    p.add_argument("--nproc", type=int, default=1, help="start N local ranks (via torchrun); needs engine.name=ddp")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("pack", help="write WebDataset shards and a manifest from an image source")
    p.add_argument("source", help="image folder, .zip, .npz, IDX file, or a bundled dataset: mnist5k, digits")
    p.add_argument("out_dir")
    p.add_argument("--resolution", type=int, required=True, help="square output size, a power of two")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    p.add_argument("--format", choices=("png", "jpg"), default="png")
    p.add_argument("--channels", type=int, choices=(1, 3), help="default: 1 if the images are grayscale")
    p.add_argument("--labels", help="IDX labels file (default: guessed from the images file name)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample order across shards")
    p.add_argument("--force", action="store_true", help="overwrite an existing manifest")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("sample", help="write a grid of G_ema samples")
    p.add_argument("checkpoint", help="checkpoint-*.pt or G_ema-*.safetensors")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--cols", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--class", dest="class_index", type=int, help="class for every sample (conditional models)")
    p.add_argument("--truncation", type=float, help="truncation psi (models with a truncation trick)")
    p.set_defaults(func=cmd_sample)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """argparse, plus key=value overrides placed after the options (launcher scripts append them there)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    if len(overrides) != len(extra) or (overrides and args.command != "train"):
        parser.error(f"unrecognized arguments: {' '.join(a for a in extra if a not in overrides) or extra[0]}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as exc:
        print(f"gantrain: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
