"""Evaluate a trained run: ``python eval.py run=runs/<name> [key=value ...]``, the Hydra app of
:mod:`aft.commands.eval` (``aft-eval`` in an installed package; its docstring has the examples)."""

from aft.commands.eval import main

if __name__ == "__main__":
    main()
