"""The project's commands as modules: ``train`` and ``eval`` (Hydra apps), ``compare``, ``sweep`` and
``rehearse``. ``python train.py``, ``python eval.py`` and ``python scripts/<name>.py`` in a checkout,
``python -m aft.commands.<name>`` and an installed package's ``aft-<name>`` all run their ``main``."""
