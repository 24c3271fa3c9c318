"""Dataset modules of the paper's experiments (§5.1 CIFAR-10 pixels, §5.2 enwik8, §5.3 ImageNet) and
embedded no-download defaults. The interface the training loop uses is in ``data.base``; each dataset
lives in its own module (``data.cifar10``, ``data.enwik8``, ``data.imagenet``, ``data.embedded_text``,
``data.embedded_images``) and is built from ``configs/data/<name>.yaml`` with ``hydra.utils.instantiate``.
"""

from data.base import DataError, DataModule, nats_to_bits

__all__ = ["DataError", "DataModule", "nats_to_bits"]
