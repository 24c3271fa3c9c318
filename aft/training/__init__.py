"""Training and evaluation machinery behind ``train.py`` and ``eval.py``."""
