"""ImageNet (DeiT recipe) from a tiny ImageFolder and a tiny Hugging Face parquet copy."""

from pathlib import Path

import numpy as np
import pytest
import torch
from timm.data import Mixup
from timm.data.auto_augment import RandAugment
from timm.data.distributed_sampler import RepeatAugSampler
from timm.data.random_erasing import RandomErasing
from torchvision import transforms

from data.base import DataError
from data.deit import default_crop_pct
from data.imagenet import ImageNet
from tests.data.data_fixtures import IMAGENET_CLASSES, write_hf_parquet

N_CLASSES = len(IMAGENET_CLASSES)


def make(root: Path, **kwargs) -> ImageNet:
    return ImageNet(str(root), **{"num_classes": N_CLASSES, "image_size": 32, "num_workers": 0, **kwargs})


def indices(loader) -> list[int]:
    """The dataset indices a train loader draws, in order (its sampler pairs each with a draw seed)."""
    return [index for index, _seed in loader.sampler]


def test_batches_have_the_classification_format(imagenet_root: Path) -> None:
    dm = make(imagenet_root, eval_image_size=48)
    images, labels = next(iter(dm.train_dataloader(4, seed=0)))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.int64
    images, labels = next(iter(dm.eval_dataloader("val", 6)))
    assert images.shape == (6, 3, 48, 48)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]  # synset folders in sorted order
    assert dm.describe()["samples"] == {"train": 12, "val": 6}


def test_transforms_follow_deit(imagenet_root: Path) -> None:
    dm = make(imagenet_root)
    train = dm.datasets["train"].transform.transforms
    assert any(isinstance(t, RandAugment) and t.ops[0].magnitude == 9 for t in train)
    erasing = next(t for t in train if isinstance(t, RandomErasing))
    assert erasing.probability == 0.25 and erasing.mode == "pixel"
    resize, crop = dm.eval_transform.transforms[:2]
    assert isinstance(resize, transforms.Resize) and resize.size == 36 and crop.size == (32, 32)  # 32 / 0.875
    assert resize.interpolation == transforms.InterpolationMode.BICUBIC
    assert (default_crop_pct(224), default_crop_pct(384)) == (0.875, 1.0)
    assert make(imagenet_root, image_size=384).eval_transform.transforms[0].size == 384


def test_mixup_fn_is_deit_mixup_cutmix_with_label_smoothing(imagenet_root: Path) -> None:
    mixup = make(imagenet_root).mixup_fn()
    assert isinstance(mixup, Mixup)
    assert (mixup.mixup_alpha, mixup.cutmix_alpha, mixup.label_smoothing) == (0.8, 1.0, 0.1)
    images, targets = mixup(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))
    assert targets.shape == (4, N_CLASSES) and torch.allclose(targets.sum(1), torch.ones(4))
    assert make(imagenet_root, mixup=0.0, cutmix=0.0).mixup_fn() is None


def test_repeated_augmentation_sampler_is_seeded_and_sharded(imagenet_root: Path) -> None:
    dm = make(imagenet_root)

    def order(rank: int, seed: int, epoch: int) -> list[int]:
        return indices(dm.train_dataloader(1, rank=rank, world_size=2, seed=seed, epoch=epoch))

    assert isinstance(dm.train_dataloader(1).sampler.sampler, RepeatAugSampler)  # inside the draw seeds
    assert order(0, 0, 0) == order(0, 0, 0) and order(0, 0, 0) != order(0, 1, 0) and order(0, 0, 0) != order(0, 0, 1)
    # DeiT's scheme: each sample is repeated 3 times and the repeats go to different ranks
    assert len(order(0, 0, 0)) == len(order(1, 0, 0)) == 6


def test_plain_distributed_sampler_without_repeats(imagenet_root: Path) -> None:
    dm = make(imagenet_root, repeated_aug=1)
    shards = [indices(dm.train_dataloader(1, rank=rank, world_size=2)) for rank in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(12))


def test_parquet_copy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("validation", 3)):
        images = [rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8) for _ in range(count)]
        write_hf_parquet(
            tmp_path / "hf" / "data" / f"{split}-00000-of-00001.parquet",
            images,
            [i % N_CLASSES for i in range(count)],
            "image",
            N_CLASSES,
        )
    dm = make(tmp_path / "hf", source="parquet", hf_cache_dir=str(tmp_path / "cache"))
    images, labels = next(iter(dm.eval_dataloader("val", 3)))
    assert images.shape == (3, 3, 32, 32) and labels.tolist() == [0, 1, 2]
    assert next(iter(dm.train_dataloader(2)))[0].shape == (2, 3, 32, 32)
    with pytest.raises(DataError, match=r"labels in \[0, 2\], expected \[0, data.num_classes=2\)"):
        make(tmp_path / "hf", source="parquet", num_classes=2, hf_cache_dir=str(tmp_path / "cache"))


def test_empty_class_folder_is_reported(imagenet_root: Path) -> None:
    for image in (imagenet_root / "val" / IMAGENET_CLASSES[1]).iterdir():
        image.unlink()
    with pytest.raises(DataError, match="1 of 3 class folders hold no images"):
        make(imagenet_root)


def test_class_count_and_mismatched_splits_are_reported(imagenet_root: Path) -> None:
    with pytest.raises(DataError, match="has 3 class folders, expected data.num_classes=1000"):
        make(imagenet_root, num_classes=1000)
    (imagenet_root / "val" / IMAGENET_CLASSES[0]).rename(imagenet_root / "val" / "n99999999")
    with pytest.raises(DataError, match="different class folders"):
        make(imagenet_root)


def test_missing_data_names_the_config_key(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"train/ folder not found.*data\.root.*image-net\.org"):
        make(tmp_path)
    with pytest.raises(DataError, match=r"parquet files not found.*data\.root"):
        make(tmp_path, source="parquet")


def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images.clone(), labels.clone()) for images, labels in loader]


def test_augmentation_does_not_depend_on_the_number_of_workers(imagenet_root: Path) -> None:
    one, two = (make(imagenet_root, num_workers=n, repeated_aug=1) for n in (0, 2))
    a, b = (_batches(dm.train_dataloader(4, seed=3, epoch=1)) for dm in (one, two))
    assert len(a) == len(b) == 3
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_each_repeat_of_an_image_is_augmented_differently(imagenet_root: Path) -> None:
    dm = make(imagenet_root, repeated_aug=3, re_prob=0.0)
    loader = dm.train_dataloader(1, seed=0)
    draws: dict[int, list[torch.Tensor]] = {}
    for index, seed in loader.sampler:
        draws.setdefault(index, []).append(loader.dataset[(index, seed)][0])
    repeated = [images for images in draws.values() if len(images) > 1]
    assert repeated and all(not torch.equal(images[0], images[1]) for images in repeated)


def test_a_draw_leaves_the_training_rngs_untouched(imagenet_root: Path) -> None:
    loader = make(imagenet_root).train_dataloader(4, seed=0)
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    next(iter(loader))  # num_workers=0: the draws run in this process
    assert torch.equal(torch.rand(3), expected)


def test_loading_leaves_the_global_rngs_untouched(imagenet_root: Path) -> None:
    """The start-up decode check draws no augmentation: the trainer seeds the initial weights around it."""
    import random

    states = lambda: (random.getstate(), np.random.get_state()[1].tolist(), torch.random.get_rng_state())  # noqa: E731
    for python_seed in range(8):  # random erasing (p=0.25) draws from torch only when Python's RNG says so
        random.seed(python_seed)
        before = states()
        make(imagenet_root, re_prob=1.0 if python_seed % 2 else 0.25)
        after = states()
        assert before[:2] == after[:2] and torch.equal(before[2], after[2]), python_seed


def test_undecodable_images_are_one_clear_error(imagenet_root: Path) -> None:
    for image in (imagenet_root / "train").rglob("*.JPEG"):
        image.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"ImageNet train split .* corrupt"):
        make(imagenet_root)


def test_randaugment_posterize_to_zero_bits_gives_a_black_image(imagenet_root: Path) -> None:
    from PIL import Image
    from timm.data import auto_augment

    (op,) = [
        op
        for t in make(imagenet_root).datasets["train"].transform.transforms
        if isinstance(t, RandAugment)
        for op in t.ops
        if op.name == "PosterizeIncreasing"
    ]
    image = Image.new("RGB", (8, 8), (200, 100, 50))
    assert np.asarray(op.aug_fn(image, 0)).max() == 0 and op.aug_fn(image, 8) is image
    assert np.array_equal(np.asarray(op.aug_fn(image, 2)), np.asarray(auto_augment.posterize(image, 2)))
