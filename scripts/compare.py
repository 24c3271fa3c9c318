"""Compare the paper's tables with our evaluation records: ``python scripts/compare.py [--runs ...]``,
the command of :mod:`aft.commands.compare` (``aft-compare`` in an installed package)."""

from aft.commands.compare import main

if __name__ == "__main__":
    main()
