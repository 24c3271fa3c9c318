"""Train the rows of one table of the paper: ``python scripts/sweep.py <table> [--dry-run] [key=value ...]``,
the command of :mod:`aft.commands.sweep` (``aft-sweep`` in an installed package)."""

import sys

from aft.commands.sweep import main

if __name__ == "__main__":
    sys.exit(main())
