"""Metric logging: a JSONL file in the run folder, always, and wandb when enabled.

Only rank 0 logs. wandb needs no account in ``offline`` or ``disabled`` mode; ``online``
without credentials fails at start-up with the fix, instead of hanging at a prompt.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from aft.extras import require

METRICS_FILE = "metrics.jsonl"


class MetricLogger:
    """Appends one JSON object per call to ``run_dir/metrics.jsonl`` and mirrors it to wandb.

    Args:
        run_dir: the run folder.
        wandb_mode: ``"disabled"``, ``"offline"`` or ``"online"``.
        project, name: wandb project and run name.
        config: the resolved run config, stored with the wandb run.
        resume_step: on resume, records of steps after it (logged before a crash) are dropped,
            so the file holds one continuous curve.
    """

    def __init__(
        self,
        run_dir: Path,
        wandb_mode: str = "disabled",
        project: str = "aft",
        name: str | None = None,
        config: dict[str, Any] | None = None,
        resume_step: int = 0,
    ) -> None:
        self.path = run_dir / METRICS_FILE
        _truncate_after(self.path, resume_step)
        self._file = open(self.path, "a", buffering=1)
        self._wandb = _init_wandb(run_dir, wandb_mode, project, name, config)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, "time": time.time(), **metrics}
        self._file.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All records of ``run_dir/metrics.jsonl``."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _truncate_after(path: Path, step: int) -> None:
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def _init_wandb(run_dir: Path, mode: str, project: str, name: str | None, config: dict[str, Any] | None):
    if mode == "disabled":
        return None
    if mode not in ("offline", "online"):
        raise ValueError(f"logger.wandb_mode={mode!r}: use disabled, offline or online")
    if mode == "online" and not (os.environ.get("WANDB_API_KEY") or (Path.home() / ".netrc").exists()):
        raise ValueError(
            "logger.wandb_mode=online needs wandb credentials: run `wandb login` or set WANDB_API_KEY, "
            "or use logger.wandb_mode=offline (sync later with `wandb sync`)"
        )
    wandb = require("wandb", f"logger.wandb_mode={mode}")

    id_file = run_dir / "wandb_id.txt"
    run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
    id_file.write_text(run_id)
    return wandb.init(project=project, name=name, id=run_id, resume="allow", mode=mode, dir=str(run_dir), config=config)
