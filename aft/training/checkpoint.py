"""Atomic, resumable checkpoints.

A checkpoint is one ``torch.save`` file holding the model, optimizer, grad-scaler and
scheduler state, every RNG state and the data position. It is written to a temporary file
in the same folder, flushed to disk, and renamed over ``last.pt`` (the previous one is kept
as ``prev.pt``), so a crash or a full disk never leaves a half-written ``last.pt``. Files are
read back with ``weights_only=True``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

LAST, PREVIOUS = "last.pt", "prev.pt"


class CheckpointError(RuntimeError):
    """An unreadable or inconsistent checkpoint; the message names the file and the fix."""


def save_atomic(state: dict[str, Any], directory: Path, name: str = LAST) -> Path:
    """Write ``state`` to ``directory/name`` atomically; an existing file becomes ``prev.pt``."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    tmp = directory / f".{name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if target.exists() and name == LAST:
            os.replace(target, directory / PREVIOUS)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_directory(directory)
    return target


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; a damaged file raises :class:`CheckpointError`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated / corrupt files
        first_line = (str(error).splitlines() or ["empty"])[0]
        raise CheckpointError(
            f"checkpoint {path} is corrupt or unreadable ({type(error).__name__}: {first_line}); "
            f"resume from {path.with_name(PREVIOUS)} with trainer.resume={path.with_name(PREVIOUS)} "
            f"or delete {path} to start over"
        ) from None
    missing = {"model", "step"} - set(state)
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {sorted(missing)}: it was not written by train.py")
    return state


def load_weights(model: torch.nn.Module, state: dict[str, Any], path: Path, fix: str, key: str = "model") -> None:
    """``state[key]`` (the weights, or ``model_ema`` their average) into ``model``.

    A checkpoint without that set, or of another model, is a :class:`CheckpointError` ending in ``fix``.
    """
    if key not in state:
        raise CheckpointError(
            f"{path} holds no {key!r} weights (it has {sorted(k for k in state if 'model' in k)}): {fix}"
        )
    try:
        model.load_state_dict(state[key])
    except RuntimeError as error:
        details = [line.strip() for line in str(error).splitlines()[1:] if line.strip()] or [str(error)]
        raise CheckpointError(f"{path} does not fit the configured model ({details[0].rstrip('.')}); {fix}") from None


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs (dropout, Mixup and CutMix draw from them)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states in a ``weights_only``-loadable form."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    """``random.setstate`` needs nested tuples; a round trip may give lists."""
    return tuple(_as_tuple(i) for i in x) if isinstance(x, (list, tuple)) else x
