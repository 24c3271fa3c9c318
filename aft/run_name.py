"""Run-folder names, and the config keys that do not change what a run computes.

A run folder is ``runs/<experiment>`` or, when command-line overrides change the result,
``runs/<experiment>-<hash>``: the first 8 hex digits of the SHA-256 of those overrides, sorted.
Overrides of :data:`NON_RESULT_KEYS` (paths, workers, device, logging, evaluation and checkpoint
frequency, the micro-batch split, resume, the launcher) are left out of the name, so the same run
launched on another machine, with other paths or another number of GPUs, resumes in the same
folder. The same list tells ``scripts/compare.py`` which keys may differ between a record's config
and the paper row's config. The full overrides are kept inside the run folder
(``.hydra/overrides.yaml`` and each start's line of ``provenance.jsonl``).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

# Dotted key prefixes: a key equal to one of these, or below it, does not change the result.
NON_RESULT_KEYS: tuple[str, ...] = (
    "data.root",
    "data.cache_dir",
    "data.hf_cache_dir",
    "data.download",
    "data.verify_md5",
    "data.num_workers",
    "data.pin_memory",
    "model.mixer.backend",
    "trainer.device",
    "trainer.resume",
    "trainer.log_every",
    "trainer.eval_every",
    "trainer.eval_batches",
    "trainer.eval_batch_size",
    "trainer.checkpoint_every",
    "trainer.micro_batch_size",
    "trainer.compile",
    "trainer.compile_mode",
    "logger",
    "hydra",
)
GROUP_PREFIX = "hydra/"  # `hydra/launcher=...` and other Hydra group choices


def _key(override: str) -> str:
    """The dotted key of a Hydra override (``+a.b=1``, ``~a.b``, ``a/b=c``: ``a.b``)."""
    return override.split("=", 1)[0].lstrip("+~").replace("/", ".")


def is_result_key(key: str) -> bool:
    """Whether a dotted config key can change what a run computes."""
    return not any(key == prefix or key.startswith(prefix + ".") for prefix in NON_RESULT_KEYS)


def result_overrides(overrides: Iterable[str]) -> list[str]:
    """The overrides that change the result, sorted, without ``experiment=``."""
    kept = (o for o in overrides if not o.startswith(GROUP_PREFIX) and _key(o) != "experiment")
    return sorted(o for o in kept if is_result_key(_key(o)))


def run_name(experiment: str | None, overrides: Iterable[str]) -> str:
    """``<experiment>`` or ``<experiment>-<8 hex digits>`` (the hash of :func:`result_overrides`)."""
    name = experiment or "default"
    changed = result_overrides(overrides)
    if not changed:
        return name
    return f"{name}-{hashlib.sha256(chr(10).join(changed).encode()).hexdigest()[:8]}"


def result_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a resolved config container without the keys of :data:`NON_RESULT_KEYS`."""
    kept = copy.deepcopy(dict(config))
    for prefix in NON_RESULT_KEYS:
        *parents, leaf = prefix.split(".")
        node: Any = kept
        for part in parents:
            node = node.get(part) if isinstance(node, Mapping) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return kept
