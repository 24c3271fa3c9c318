"""Dataset modules of the paper's experiments (§5.1 CIFAR-10 pixels, §5.2 enwik8, §5.3 ImageNet), their
miniatures on real images that ship with scikit-learn and scikit-image (``aft[miniature]``) and
embedded no-download defaults. The interface the training loop uses is in ``data.base``; each dataset
lives in its own module (``data.cifar10``, ``data.enwik8``, ``data.imagenet``, ``data.digits``,
``data.photo_tiles``, ``data.embedded_text``, ``data.embedded_images``) and is built from
``configs/data/<name>.yaml`` with ``hydra.utils.instantiate``. ImageNet and the digits share the DeiT
recipe of ``data.deit``; CIFAR-10 and the photograph tiles the pixel sequences of ``data.pixel_sequence``.
"""

from data.base import DataError, DataModule, nats_to_bits

__all__ = ["DataError", "DataModule", "nats_to_bits"]
