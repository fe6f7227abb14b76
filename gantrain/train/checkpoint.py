"""Checkpoints: one file per snapshot holding the whole training state, written atomically.

A run dir holds checkpoint-<nimg>.pt files, a `latest` pointer and, per checkpoint, G_ema exported as
safetensors for inference. Files are only ever added by rename and removed after a newer checkpoint
is complete, so a crash at any moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import errno
import json
import logging
import pickle
import re
import shutil
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from gantrain.atomic import atomic_open, atomic_save, atomic_write
from gantrain.train.guard import nonfinite_names

log = logging.getLogger(__name__)
LATEST = "latest"
_NAME = re.compile(r"checkpoint-(\d{10})\.pt$")


class CheckpointError(RuntimeError):
    pass


class NonFiniteError(CheckpointError):
    """The state to be written holds inf/NaN: refused, the previous checkpoint stays the latest."""


def _flat(tree: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return {prefix.rstrip("."): tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    return {k: v for key, value in items for k, v in _flat(value, f"{prefix}{key}.").items()}


def _refuse_nonfinite(state: dict[str, Any], g_ema: dict[str, torch.Tensor]) -> None:
    """A checkpoint or export with inf/NaN in it would poison every resume and sample: never write one."""
    bad = nonfinite_names({**_flat(state), **_flat(g_ema, "G_ema export.")})
    if bad:
        raise NonFiniteError(f"refusing to write a checkpoint with non-finite values in {len(bad)} tensor(s): "
                             f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}")


def checkpoint_name(nimg: int) -> str:
    return f"checkpoint-{nimg:010d}.pt"


def export_name(nimg: int) -> str:
    return f"G_ema-{nimg:010d}.safetensors"


@contextmanager
def disk_full_is_one_line(run_dir: Path, state: dict[str, Any] | None = None):
    """ENOSPC (and torch's wrapped form of it) becomes one line naming the run dir and the space needed;
    the temp file is gone and the previous checkpoint untouched (atomic writes). Without STATE: a write of
    the run's logs (log.txt, stats.jsonl, TensorBoard events, pictures)."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        need = 0 if state is None else sum(t.numel() * t.element_size() for t in _flat(state).values()) / 2**20
        free = shutil.disk_usage(run_dir).free / 2**20
        # torch reports a failed write inside its zip writer as "[enforce fail at inline_container.cc]"
        full = getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in str(exc) or \
            ("inline_container" in str(exc) and free < need)
        if not full:
            raise
        what = f"a checkpoint (needs about {need:.0f} MiB" if state is not None else "the run's logs (" + \
            "TensorBoard events, stats.jsonl, pictures"
        raise CheckpointError(f"{run_dir}: no space left on device for {what}, {free:.0f} MiB free); "
                              "the previous checkpoint is intact") from None


def write_export(run_dir: Path, name: str, g_ema: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in g_ema.items()}
    meta = {k: json.dumps(v) for k, v in metadata.items()}
    atomic_save(run_dir / name, lambda tmp: save_file(tensors, tmp, metadata=meta))


def save(run_dir: Path, state: dict[str, Any], nimg: int, keep: int,
         g_ema: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Write the checkpoint, its safetensors export and the pointer; then prune to the newest KEEP."""
    _refuse_nonfinite(state, g_ema)
    path = run_dir / checkpoint_name(nimg)
    with disk_full_is_one_line(run_dir, state):
        with atomic_open(path, "wb") as f:
            torch.save(state, f)
        write_export(run_dir, export_name(nimg), g_ema, metadata)
        atomic_write(run_dir / LATEST, path.name + "\n")
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
        (run_dir / export_name(int(_NAME.search(old.name).group(1)))).unlink(missing_ok=True)
    return path


BEST = "checkpoint-best.pt"
BEST_EXPORT = "G_ema-best.safetensors"


def save_best(run_dir: Path, state: dict[str, Any], g_ema: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """The checkpoint with the best evaluation figure so far (never pruned, replaced atomically by a better one)
    and its G_ema export; metadata["best"] says which figure, its value and the kimg."""
    _refuse_nonfinite(state, g_ema)
    path = run_dir / BEST
    with disk_full_is_one_line(run_dir, state):
        with atomic_open(path, "wb") as f:
            torch.save(state, f)
        write_export(run_dir, BEST_EXPORT, g_ema, metadata)
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints in the run dir, oldest first."""
    return sorted(p for p in Path(run_dir).glob("checkpoint-*.pt") if _NAME.search(p.name))


def load(path: str | Path) -> dict[str, Any]:
    """Load with weights_only=True (no code execution); any damage becomes a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable gantrain checkpoint (truncated or foreign file: "
                              f"{reason})") from None
    if not isinstance(state, dict) or state.get("format") != "gantrain-checkpoint/1":
        raise CheckpointError(f"{path}: not a gantrain checkpoint (no gantrain-checkpoint/1 marker)")
    return state


def load_latest(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """Newest loadable checkpoint for `--resume auto`: the `latest` pointer first, then older ones.

    A damaged newest file is reported and passed over rather than ending the run.
    """
    candidates = list(reversed(list_checkpoints(run_dir)))
    pointer = run_dir / LATEST
    if pointer.exists():
        named = run_dir / pointer.read_text().strip()
        candidates = [named] + [c for c in candidates if c != named]
    damaged = []
    for path in candidates:
        try:
            return path, load(path)
        except CheckpointError as exc:
            log.warning("skipping damaged checkpoint: %s", exc)
            damaged.append(path.name)
    if damaged:  # starting from zero would train over (and later overwrite) files that are not ours
        raise CheckpointError(f"{run_dir}: no readable checkpoint to resume from (damaged: {', '.join(damaged)}); "
                              "move them away to start afresh, or pass --resume PATH")
    return None
