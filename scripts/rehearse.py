"""Rehearse the whole life of every experiment config on tiny files: ``python scripts/rehearse.py [--ci]``,
the command of :mod:`aft.commands.rehearse` (``aft-rehearse`` in an installed package)."""

import sys

from aft.commands.rehearse import main

if __name__ == "__main__":
    sys.exit(main())
