"""The package's optional parts (pyproject.toml's extras) and the one-line error when one is missing.

``pip install aft`` brings what trains and evaluates the models; ``aft[slurm]`` (Hydra's submitit
launcher), ``aft[wandb]``, ``aft[parquet]`` (Hugging Face ``datasets``, for the parquet copies of
CIFAR10 and ImageNet), ``aft[figures]`` (matplotlib: compare's figures), ``aft[cuda]`` (Triton)
and ``aft[miniature]`` (scikit-learn and scikit-image, whose packaged images the miniature data sets
read) add the rest; ``aft[dev]`` all of them and the test tools. Code that needs one imports it with
:func:`require` where it is used.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

EXTRAS = {  # imported module -> its extra
    "wandb": "wandb",
    "datasets": "parquet",
    "matplotlib": "figures",
    "sklearn": "miniature",
    "skimage": "miniature",
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require(module: str, purpose: str) -> ModuleType:
    """``import module`` for ``purpose`` (e.g. ``"logger.wandb_mode=offline"``); a missing
    distribution is a :class:`MissingExtraError` naming ``pip install 'aft[<extra>]'``."""
    top = module.split(".")[0]
    try:
        return import_module(module)
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] != top:
            raise  # the module is there but one of its own imports is broken: a defect, with its traceback
        raise MissingExtraError(
            f"{purpose} needs {top}, which is not installed: pip install 'aft[{EXTRAS[top]}]'"
        ) from None
