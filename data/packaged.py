"""Data files that ship inside installed packages (``aft[miniature]``: scikit-learn's digits, the
photographs of scikit-image and scikit-learn), read from the package folder, never fetched.

Each read returns the file's bytes and its record: distribution, version, path inside the wheel and md5.
"""

from __future__ import annotations

import hashlib
from importlib.metadata import version
from importlib.resources import files

from aft.extras import require
from data.base import DataError

DISTRIBUTIONS = {"sklearn": "scikit-learn", "skimage": "scikit-image"}  # import name -> distribution


def read_packaged(module: str, name: str, purpose: str) -> tuple[bytes, dict[str, str]]:
    """The bytes of file ``name`` of package ``module`` (e.g. ``"skimage.data"``) and their record.

    ``purpose`` names the config that needs it, for the one-line error when the package is missing.
    """
    resource = files(require(module, purpose)) / name
    distribution = DISTRIBUTIONS[module.split(".")[0]]
    if not resource.is_file():
        raise DataError(f"{purpose}: {distribution} {version(distribution)} has no file {name} in {module}")
    data = resource.read_bytes()
    return data, {
        "package": distribution,
        "version": version(distribution),
        "file": f"{module.replace('.', '/')}/{name}",
        "md5": hashlib.md5(data).hexdigest(),
    }
