"""How the command-line entry points (``train.py``, ``eval.py``) report a user's mistake.

A user error (a wrong config key or value, a missing file, bad data, a damaged checkpoint, a
diverged run, an optional part that is not installed) ends the command with one line
``error: <what and how to fix it>`` on stderr and exit status 1; any other exception is a defect
of the code and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.errors import InstantiationException

from aft.extras import MissingExtraError
from aft.training.checkpoint import CheckpointError
from aft.training.trainer import NonFiniteLossError
from data.base import DataError

USER_ERRORS = (ValueError, FileNotFoundError, DataError, CheckpointError, NonFiniteLossError, MissingExtraError)


def root_cause(error: BaseException) -> BaseException:
    """The exception a Hydra ``instantiate`` wrapped, or ``error`` itself."""
    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    return error


@contextmanager
def user_errors_exit() -> Iterator[None]:
    """Turn a user error raised inside the block into ``error: ...`` on stderr and ``exit 1``."""
    try:
        yield
    except Exception as error:
        cause = root_cause(error)
        if isinstance(cause, USER_ERRORS):
            print(f"error: {cause}", file=sys.stderr, flush=True)
            sys.exit(1)
        raise
