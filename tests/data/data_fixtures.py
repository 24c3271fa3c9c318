"""The tiny-file writers of ``data.formats``, under the names the data tests import."""

from data.formats import (  # noqa: F401
    CIFAR_TEST,
    CIFAR_TRAIN_PER_BATCH,
    ENWIK8_SPLITS,
    IMAGENET_CLASSES,
    rows_to_hwc,
    write_cifar_batches,
    write_enwik8_zip,
    write_hf_parquet,
    write_image_folder,
)
