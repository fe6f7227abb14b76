"""Pictures of a generator and of a run: truncation sweeps, latent walks as GIF/MP4, a progress montage
of a run's fixed-latent grids, and loss curves as a PNG for people who do not run TensorBoard.

Latent-space conventions: a generator with `mapping`/`synthesis` (style-based) is interpolated linearly
and truncated towards `w_avg` in w; any other generator is interpolated spherically in z (z is Gaussian,
so a straight line would pass through improbable small-norm latents) and truncated by scaling z towards
its mean 0, the same lerp applied in the only latent space such a model has.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image, ImageDraw

from gantrain.atomic import atomic_open, atomic_save
from gantrain.models import Generator
from gantrain.models.base import resample_truncation, truncate_ws
from gantrain.sampling import label_columns, make_grid, to_uint8, upscale


def style_based(G: Generator) -> bool:
    return hasattr(G, "mapping") and hasattr(G, "synthesis")


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between rows of A and B (norms interpolated linearly)."""
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    ua, ub = a / na, b / nb
    omega = torch.arccos((ua * ub).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    direction = (torch.sin((1 - t) * omega) * ua + torch.sin(t * omega) * ub) / so
    return direction * ((1 - t) * na + t * nb)


def truncate(G: Generator, w: torch.Tensor, psi: float, cutoff: int | None = None) -> torch.Tensor:
    """W of a style-based G truncated by PSI up to layer CUTOFF (models.base.truncate_ws); W is [N, w_dim]
    (every layer) or [N, num_ws, w_dim]."""
    if cutoff is not None and w.dim() == 2:
        w = w.unsqueeze(1).repeat(1, G.num_ws, 1)
    return truncate_ws(w, G.w_avg, psi, cutoff)


@torch.no_grad()
def render(G: Generator, z: torch.Tensor, c: torch.Tensor | None, psi: float = 1.0, resolution: int | None = None,
           w: torch.Tensor | None = None, cutoff: int | None = None, noise_mode: str | None = None) -> torch.Tensor:
    """uint8 images of latents Z (or ready-made W for a style-based G), truncated by PSI (in w up to layer
    CUTOFF for a style-based G, in z otherwise); NOISE_MODE (random, const, none) for G's noise inputs,
    None: the model's own."""
    if style_based(G):
        w = truncate(G, G.mapping(z, c) if w is None else w, psi, cutoff)
        images = G.synthesis(w, noise_mode) if noise_mode else G.synthesis(w)
    elif getattr(G, "truncation", "shrink") == "resample":  # BigGAN: psi is the threshold; 1 means none
        images = G(z if psi == 1 else resample_truncation(z, psi), c)
    else:
        images = G(z * psi, c)
    if resolution and images.shape[-1] != resolution:
        images = F.interpolate(images.float(), size=resolution, mode="nearest")
    return to_uint8(images.float().cpu())


def truncation_sweep(G: Generator, psis: list[float], rows: int, seed: int, class_index: int | None = None,
                     resolution: int | None = None, scale: int | None = None, cutoff: int | None = None,
                     noise_mode: str | None = None) -> torch.Tensor:
    """A grid: one row per latent (seeded), one column per psi, enlarged SCALE times (nearest; None: just
    enough for the labels to fit), each column labelled with its psi on a strip above."""
    device = next(G.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, G.z_dim, generator=gen)
    c = None
    if G.num_classes:
        c = torch.full((rows,), class_index, dtype=torch.int64) if class_index is not None \
            else torch.randint(0, G.num_classes, (rows,), generator=gen)
    z, c = z.to(device), None if c is None else c.to(device)
    columns = torch.stack([render(G, z, c, psi, resolution, cutoff=cutoff, noise_mode=noise_mode)
                           for psi in psis], dim=1)  # [rows, psis, C, H, W]
    scale = label_scale(columns.shape[-1]) if scale is None else scale
    grid = upscale(make_grid(columns.flatten(0, 1), len(psis)), scale)
    return label_columns(grid, [f"psi {p:g}" for p in psis], short=[f"{p:g}" for p in psis])


def seed_latents(G: Generator, seeds: list[int], class_index: int | None = None,
                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
    """One latent per seed, each from its own generator: seed S gives the same z (and image) whatever the
    other seeds, the order or the machine. A conditional G gets CLASS_INDEX for every seed."""
    z = torch.cat([torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(s)) for s in seeds])
    c = torch.full((len(seeds),), class_index, dtype=torch.int64) if G.num_classes else None
    return z.to(device), None if c is None else c.to(device)


@torch.no_grad()
def style_mix_grid(G: Generator, row_seeds: list[int], col_seeds: list[int], styles: list[int], psi: float = 1.0,
                   cutoff: int | None = None, noise_mode: str = "const",
                   class_index: int | None = None) -> torch.Tensor:
    """The reference's style-mixing figure: the column seeds' images along the top, the row seeds' down the
    left, and at (row, col) the row's ws with the STYLES layers taken from the column's."""
    seeds = list(dict.fromkeys(row_seeds + col_seeds))
    z, c = seed_latents(G, seeds, class_index, next(G.parameters()).device)
    ws = dict(zip(seeds, truncate(G, G.mapping(z, c), psi, cutoff)))
    cells = []
    for row in row_seeds:
        for col in col_seeds:
            w = ws[row].clone()
            w[styles] = ws[col][styles]
            cells.append(w)
    ws_all = torch.stack([ws[s] for s in col_seeds] + [ws[s] for s in row_seeds] + cells)
    images = to_uint8(torch.cat([G.synthesis(chunk, noise_mode) for chunk in ws_all.split(64)]).float().cpu())
    top, left, mixed = images.split([len(col_seeds), len(row_seeds), len(cells)])
    corner = torch.full_like(top[:1], 255)  # white
    rows = [torch.cat([corner, top])] + [torch.cat([left[i:i + 1], mixed[i * len(col_seeds):][:len(col_seeds)]])
                                         for i in range(len(row_seeds))]
    return make_grid(torch.cat(rows), len(col_seeds) + 1)


def label_scale(cell: int, widest: int = 36) -> int:
    """The smallest integer upscaling at which a CELL-pixel column fits a WIDEST-pixel label ("psi 0.8")."""
    return max(1, -(-widest // cell))


def interpolation_frames(G: Generator, n: int, keyframes: int, steps: int, seed: int,
                         class_index: int | None = None, psi: float = 1.0, cutoff: int | None = None,
                         noise_mode: str | None = None) -> list[torch.Tensor]:
    """N parallel latent walks (shown as a grid) through KEYFRAMES random latents and back to the first,
    STEPS frames per leg: a seamless loop of keyframes * steps frames."""
    gen = torch.Generator().manual_seed(seed)
    keys = torch.randn(keyframes, n, G.z_dim, generator=gen)
    c = None
    if G.num_classes:
        c = torch.full((n,), class_index, dtype=torch.int64) if class_index is not None \
            else torch.randint(0, G.num_classes, (n,), generator=gen)
    cols = math.ceil(math.sqrt(n))
    frames = []
    with torch.no_grad():
        ws = [G.mapping(k, c) for k in keys] if style_based(G) else None
        for leg in range(keyframes):
            nxt = (leg + 1) % keyframes
            for step in range(steps):
                t = step / steps
                if ws is not None:
                    images = render(G, keys[leg], c, psi, w=torch.lerp(ws[leg], ws[nxt], t), cutoff=cutoff,
                                    noise_mode=noise_mode)
                else:
                    images = render(G, slerp(keys[leg], keys[nxt], t), c, psi)
                frames.append(make_grid(images, cols))
    return frames


def _pil(frame: torch.Tensor) -> Image.Image:
    array = frame.numpy()
    return Image.fromarray(array[0] if array.shape[0] == 1 else np.transpose(array, (1, 2, 0)))


def write_animation(frames: list[torch.Tensor], path: str | Path, fps: int = 24, scale: int = 1) -> None:
    """FRAMES ([C, H, W] uint8) as an animated GIF (Pillow) or MP4 (H.264 through PyAV), written atomically."""
    path = Path(path)
    images = [_pil(f) for f in frames]
    if scale > 1:
        images = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in images]
    suffix = path.suffix.lower()
    if suffix == ".gif":
        with atomic_open(path, "wb") as f:
            images[0].save(f, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps),
                           loop=0)
    elif suffix == ".mp4":
        try:
            import av
        except ImportError:
            raise ValueError(f"{path}: MP4 needs PyAV (pip install av); write a .gif instead") from None

        def encode(tmp: str) -> None:
            with av.open(tmp, mode="w", format="mp4") as container:
                stream = container.add_stream("libx264", rate=fps)
                # yuv420p wants even sizes: pad by a black row/column where needed
                stream.width, stream.height = images[0].width + images[0].width % 2, \
                    images[0].height + images[0].height % 2
                stream.pix_fmt = "yuv420p"
                for im in images:
                    canvas = Image.new("RGB", (stream.width, stream.height))
                    canvas.paste(im.convert("RGB"))
                    for packet in stream.encode(av.VideoFrame.from_image(canvas)):
                        container.mux(packet)
                for packet in stream.encode():
                    container.mux(packet)

        atomic_save(path, encode)
    else:
        raise ValueError(f"{path}: unknown animation format '{path.suffix}' (use .gif or .mp4)")


_SNAPSHOT = re.compile(r"fakes-(\d{10})\.png$")


def progress_montage(run_dir: str | Path, samples: int = 8, max_rows: int = 12, scale: int = 1) -> Image.Image:
    """One row per fixed-latent grid of the run (at most MAX_ROWS, evenly spaced, first and last kept):
    its first SAMPLES cells, enlarged SCALE times (nearest), labelled with the kimg it was drawn at."""
    run_dir = Path(run_dir)
    snaps = sorted((int(m.group(1)), p) for p in run_dir.glob("fakes-*.png") if (m := _SNAPSHOT.search(p.name)))
    if not snaps:
        raise ValueError(f"{run_dir}: no fakes-*.png grids (is it a gantrain run dir?)")
    if len(snaps) > max_rows:
        picks = np.unique(np.linspace(0, len(snaps) - 1, max_rows).round().astype(int))
        snaps = [snaps[i] for i in picks]
    cfg_path = run_dir / "config.yaml"
    grid = yaml.safe_load(cfg_path.read_text())["log"]["grid"] if cfg_path.exists() else 8
    first = Image.open(snaps[0][1])
    cell = first.width // grid
    samples = min(samples, grid * grid)
    label, big = 72, cell * scale
    out = Image.new("RGB", (label + samples * big, len(snaps) * big), "white")
    draw = ImageDraw.Draw(out)
    for row, (nimg, path) in enumerate(snaps):
        image = Image.open(path).convert("RGB")
        for i in range(samples):
            r, q = divmod(i, grid)
            crop = image.crop((q * cell, r * cell, (q + 1) * cell, (r + 1) * cell))
            out.paste(crop.resize((big, big), Image.NEAREST), (label + i * big, row * big))
        draw.text((4, row * big + big // 2 - 6), f"{nimg / 1000:.1f} kimg", fill="black")
    return out


def loss_curves(run_dir: str | Path) -> "matplotlib.figure.Figure":  # noqa: F821
    """Losses (and, if the run evaluated, its metrics) against kimg from stats.jsonl / metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    stats_path = run_dir / "stats.jsonl"
    if not stats_path.exists():
        raise ValueError(f"{run_dir}: no stats.jsonl (is it a gantrain run dir?)")
    rows = [json.loads(line) for line in stats_path.read_text().splitlines() if line.strip()]
    metrics_path = run_dir / "metrics.jsonl"
    metrics = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()] \
        if metrics_path.exists() else []
    panels = 2 if metrics else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4), squeeze=False)
    ax = axes[0, 0]
    for key in sorted({k for r in rows for k in r if k.startswith("Loss/")}):
        points = [(r["nimg"] / 1000, r[key]) for r in rows if key in r]
        ax.plot(*zip(*points), label=key[5:])
    ax.set(xlabel="kimg", ylabel="loss", title=run_dir.name)
    ax.legend()
    ax.grid(alpha=0.3)
    if metrics:
        ax = axes[0, 1]
        for key in sorted({k for r in metrics for k in r if k.startswith("Metrics/") and not k.endswith("_std")}):
            points = [(r["nimg"] / 1000, r[key]) for r in metrics if key in r]
            ax.plot(*zip(*points), marker="o", label=key[8:])
        ax.set(xlabel="kimg", title="metrics")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def save_figure(fig: "matplotlib.figure.Figure", path: str | Path) -> None:  # noqa: F821
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)


def save_image(image: Image.Image, path: str | Path) -> None:
    with atomic_open(path, "wb") as f:
        image.save(f, format="PNG")
