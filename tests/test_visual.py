"""Pictures: truncation sweeps, latent walks (GIF read back with Pillow, MP4 with PyAV), montage, curves."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import tiny_config
from gantrain.cli import load_generator
from gantrain.cli import main as cli_main
from gantrain.sampling import make_grid
from gantrain.train import checkpoint
from gantrain.train.loop import run
from gantrain.visual import interpolation_frames, render, slerp, truncation_sweep


@pytest.fixture(scope="module")
def run_dir(digits16, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    run(tiny_config(digits16, train={"kimg": 0.16}, log={"image_kimg": 0.032}), out)
    return out


def test_slerp_keeps_endpoints_and_interpolates_norms():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 16, generator=gen), torch.randn(5, 16, generator=gen)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-5) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    mid = slerp(a, b, 0.5)
    assert torch.allclose(mid.norm(dim=1), (a.norm(dim=1) + b.norm(dim=1)) / 2, atol=1e-5)
    # on the great circle: the angle to each endpoint is half the angle between them
    cos = lambda x, y: (x * y).sum(1) / x.norm(dim=1) / y.norm(dim=1)  # noqa: E731
    assert torch.allclose(cos(mid, a), cos(mid, b), atol=1e-5)


def test_sample_grid_has_a_class_per_row_and_truncation(run_dir, tmp_path, digits16):
    cond = tmp_path / "cond"
    run(tiny_config(digits16, model={"conditional": True}, train={"kimg": 0.032},
                    log={"snapshot_kimg": 0.032}), cond)
    ckpt = checkpoint.list_checkpoints(cond)[-1]
    out = tmp_path / "grid.png"
    assert cli_main(["sample", str(ckpt), "--out", str(out), "--n", "20", "--cols", "10"]) == 0
    image = Image.open(out)
    assert image.size == (10 * 16, 2 * 16)
    rows = torch.from_numpy(np.array(image))
    assert not torch.equal(rows[:16], rows[16:])  # class 0 row vs class 1 row
    # psi = 0 collapses every latent onto the mean: all samples of a class are the same image
    assert cli_main(["sample", str(ckpt), "--out", str(out), "--n", "10", "--cols", "10", "--class", "3",
                     "--truncation", "0"]) == 0
    cells = torch.from_numpy(np.array(Image.open(out))).view(16, 10, 16).permute(1, 0, 2)
    assert all(torch.equal(cells[0], c) for c in cells)
    # --scale N: every pixel repeated N x N times (nearest), nothing resampled
    big = tmp_path / "big.png"
    assert cli_main(["sample", str(ckpt), "--out", str(big), "--n", "10", "--cols", "10", "--class", "3",
                     "--truncation", "0", "--scale", "3"]) == 0
    native, enlarged = np.array(Image.open(out)), np.array(Image.open(big))
    assert enlarged.shape == (3 * 16, 3 * 160) and (enlarged == native.repeat(3, 0).repeat(3, 1)).all()


def test_truncation_sweep_columns_go_from_diverse_to_the_mean(run_dir, tmp_path):
    out = tmp_path / "sweep.png"
    ckpt = checkpoint.list_checkpoints(run_dir)[-1]
    assert cli_main(["truncation", str(ckpt), "--out", str(out), "--psi", "1,0.5,0", "--rows", "4"]) == 0
    image = np.array(Image.open(out))
    # by default just enlarged enough (3x: 48 px columns) for a "psi P" label above each column
    header = image.shape[0] - 4 * 48
    assert image.shape[1] == 3 * 48 and 10 < header < 30
    labels = [image[:header, 48 * col:48 * (col + 1)] for col in range(3)]
    assert all((label < 128).sum() > 20 for label in labels)  # text in every column's header
    assert not np.array_equal(labels[0], labels[1]) and not np.array_equal(labels[1], labels[2])
    cells = torch.from_numpy(image[header::3, ::3].copy()).float()  # back to native pixels
    grid = cells.view(4, 16, 3, 16).permute(2, 0, 1, 3)
    spread = [grid[col].std(0).mean().item() for col in range(3)]  # across rows, per column
    assert spread[0] > spread[1] > spread[2] == 0
    assert cli_main(["truncation", str(ckpt), "--out", str(out), "--psi", "1,0", "--scale", "1"]) == 0
    assert Image.open(out).size == (2 * 16, 6 * 16 + header)  # too narrow for "psi 1": just the number
    assert cli_main(["truncation", str(ckpt), "--out", str(out), "--scale", "0"]) == 2


def test_interpolation_gif_and_mp4_frames_and_sizes(run_dir, tmp_path):
    ckpt = checkpoint.list_checkpoints(run_dir)[-1]
    gif, mp4 = tmp_path / "walk.gif", tmp_path / "walk.mp4"
    assert cli_main(["interpolate", str(ckpt), "--out", str(gif), "--n", "4", "--keyframes", "3", "--steps",
                     "5"]) == 0
    image = Image.open(gif)
    assert image.format == "GIF" and image.n_frames == 15 and image.size == (32, 32)
    assert cli_main(["interpolate", str(ckpt), "--out", str(mp4), "--n", "9", "--keyframes", "2", "--steps", "4",
                     "--scale", "3"]) == 0
    with av.open(str(mp4)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 8 and (frames[0].width, frames[0].height) == (3 * 48, 3 * 48)
    assert cli_main(["interpolate", str(ckpt), "--out", str(tmp_path / "walk.avi")]) == 2


def test_walk_is_a_loop_through_its_keyframes(run_dir):
    G = load_generator(str(checkpoint.list_checkpoints(run_dir)[-1]))
    frames = interpolation_frames(G, n=2, keyframes=3, steps=4, seed=1)
    assert len(frames) == 12
    again = interpolation_frames(G, n=2, keyframes=3, steps=4, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(frames, again))
    # frame 0 is keyframe 0 exactly; the frame after the last is keyframe 0 again (seamless loop)
    gen = torch.Generator().manual_seed(1)
    keys = torch.randn(3, 2, G.z_dim, generator=gen)
    assert torch.equal(frames[0], make_grid(render(G, keys[0], None), 2))
    assert torch.equal(frames[4], make_grid(render(G, keys[1], None), 2))


class StyleG(nn.Module):
    """The style-based interface (mapping, synthesis, w_avg) in miniature."""

    z_dim, num_classes = 4, 0

    def __init__(self):
        super().__init__()
        self.map = nn.Linear(4, 6)
        self.syn = nn.Linear(6, 3 * 8 * 8)
        self.register_buffer("w_avg", torch.full((6,), 0.3))

    def mapping(self, z, c=None):
        return self.map(z)

    def synthesis(self, w):
        return torch.tanh(self.syn(w)).view(-1, 3, 8, 8)

    def forward(self, z, c=None):
        return self.synthesis(self.mapping(z, c))


def test_style_based_generators_truncate_towards_w_avg_and_walk_in_w():
    torch.manual_seed(0)
    G = StyleG()
    sweep = truncation_sweep(G, [1.0, 0.0], rows=3, seed=0, scale=1)  # [3, label strip + 24, 16]
    top = sweep.shape[1] - 3 * 8
    mean_image = ((torch.tanh(G.syn(G.w_avg[None])).view(3, 8, 8) + 1) * 127.5).round().to(torch.uint8)
    for row in range(3):
        assert torch.equal(sweep[:, top + row * 8:top + (row + 1) * 8, 8:], mean_image)
    frames = interpolation_frames(G, n=1, keyframes=2, steps=4, seed=0)
    keys = torch.randn(2, 1, 4, generator=torch.Generator().manual_seed(0))
    w0, w1 = G.mapping(keys[0]), G.mapping(keys[1])
    halfway = ((torch.tanh(G.syn(torch.lerp(w0, w1, 0.5))).view(3, 8, 8) + 1) * 127.5).round().to(torch.uint8)
    assert torch.equal(frames[2], halfway)  # linear in w, not in z


def test_montage_and_loss_curves(run_dir, tmp_path):
    montage, curves = tmp_path / "montage.png", tmp_path / "curves.png"
    assert cli_main(["montage", str(run_dir), "--out", str(montage), "--samples", "5"]) == 0
    snapshots = len(list(run_dir.glob("fakes-*.png")))
    assert snapshots >= 5
    image = Image.open(montage)
    assert image.size == (72 + 5 * 16, snapshots * 16)
    assert cli_main(["montage", str(run_dir), "--out", str(montage), "--max-rows", "3"]) == 0
    assert Image.open(montage).size[1] == 3 * 16
    assert cli_main(["montage", str(run_dir), "--out", str(montage), "--max-rows", "3", "--scale", "4",
                     "--samples", "5"]) == 0
    assert Image.open(montage).size == (72 + 5 * 64, 3 * 64)
    assert cli_main(["plot", str(run_dir), "--out", str(curves)]) == 0
    image = Image.open(curves)
    assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
    assert cli_main(["plot", str(tmp_path), "--out", str(curves)]) == 2
