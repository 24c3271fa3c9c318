"""Every paper experiment carries the training protocol of its section (§5.1, §5.2, §5.3, §8)."""

from __future__ import annotations

import pytest

from aft.experiments import compose_experiment, experiment_names

PAPER_ROWS = [name for name in experiment_names() if not name.startswith("embedded")]
TRANSFORMERS_AT_32 = {  # §5.1 and footnote 5: the largest batch that fits on 8 V100
    "cifar10_transformer_l12_d512",
    "cifar10_transformer_l24_d256",
    "cifar10_image_transformer_local2d_l12_d512",
}
TABLE_8_TRAINED = {"imagenet_aft_conv_base_k25_h32_ft384", "imagenet_aft_conv_base_k25_h32_rand384"}


def expected(name: str) -> dict[str, object]:
    """The paper's training hyper-parameters of experiment ``name``."""
    if name == "cifar10_sparse_transformer_strided_l128_d256":  # Table 2 quotes [7]: Child et al. 2019 §6, §7.1
        return {
            "optim.lr": 3.5e-4,
            "optim.weight_decay": 0.01,
            "model.dropout": 0.25,
            "trainer.epochs": 120,
            "trainer.batch_size": 128,
            "schedule._target_": "aft.training.optim.cosine",
        }
    if name.startswith("cifar10"):  # §5.1
        return {
            "optim.lr": 3e-3,
            "optim.weight_decay": 0.1,
            "model.dropout": 0.1,
            "trainer.epochs": 200,
            "trainer.batch_size": 32 if name in TRANSFORMERS_AT_32 else 128,
            "schedule._target_": "aft.training.optim.inverse_sqrt",
        }
    if name.startswith("enwik8"):  # §5.2
        return {
            "optim.lr": 3e-3,
            "optim.weight_decay": 0.5,
            "model.dropout": 0.1,
            "trainer.epochs": 100,
            "trainer.batch_size": 128,
            "schedule._target_": "aft.training.optim.inverse_sqrt",
        }
    fine_tuning = name in TABLE_8_TRAINED  # §5.3 "Compatibility with Transformers"
    return {  # §5.3: DeiT
        "optim.weight_decay": 0.05,
        "trainer.epochs": 100 if fine_tuning else 300,
        "trainer.batch_size": 64 if fine_tuning else 1024,
        "optim.lr": 5e-4 * (64 if fine_tuning else 1024) / 512,
        "schedule._target_": "aft.training.optim.cosine",
        "schedule.warmup_epochs": 5,
        "model.drop_path_rate": 0.0 if name == "imagenet_resnet50" else 0.1,
        "data.label_smoothing": 0.1,
        "data.mixup": 0.8,
        "data.cutmix": 1.0,
    }


def value(cfg: object, dotted: str) -> object:
    for key in dotted.split("."):
        cfg = cfg[key]
    return cfg


@pytest.mark.parametrize("name", PAPER_ROWS)
def test_training_hyperparameters_follow_the_paper(name: str) -> None:
    cfg = compose_experiment(name)
    assert {key: value(cfg, key) for key in expected(name)} == pytest.approx(expected(name))
    assert cfg.trainer.precision == "fp32"  # footnote 6
    assert cfg.trainer.sparsity_weight == (0.001 if name.endswith("_sparsity") else 0.0)  # §8, Eq. 9


def test_table_6_lengths_reach_the_model() -> None:
    for length in (2048, 4096):
        cfg = compose_experiment(f"enwik8_aft_local32_l24_d256_t{length}")
        assert cfg.data.seq_len == cfg.model.seq_len == length


def test_384_crop_evaluation_only_changes_the_evaluation() -> None:
    """§5.3: the kernel-15 model trained on 224 crops, evaluated on 384 crops."""
    base = compose_experiment("imagenet_aft_conv_small_k15_h384")
    variant = compose_experiment("imagenet_aft_conv_small_k15_h384_eval384")
    assert variant.data.eval_image_size == 384 and variant.data.image_size == base.data.image_size == 224
    variant.data.eval_image_size = base.data.eval_image_size
    assert variant == base
