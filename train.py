"""Train a model of the paper: ``python train.py [key=value ...]``, the Hydra app of
:mod:`aft.commands.train` (``aft-train`` in an installed package; its docstring has the examples)."""

from aft.commands.train import main

if __name__ == "__main__":
    main()
