"""#Params of Tables 3, 7 and 8 reproduced by the experiment configs, within max(0.15M, 1%)."""

from __future__ import annotations

import pytest

from aft.experiments import build_on_meta, compose_experiment, count_parameters

# experiment -> the paper's #Params in millions
TABLE_7 = {
    "imagenet_resnet50": 25.6,
    "imagenet_deit_tiny": 5.7,
    "imagenet_deit_small": 22.1,
    "imagenet_lambda_tiny": 4.8,
    "imagenet_lambda_small": 17.7,
    "imagenet_aft_full_tiny": 6.3,
    "imagenet_aft_full_small": 22.6,
    "imagenet_aft_conv_tiny_k11_h32": 5.4,
    "imagenet_aft_conv_tiny_k11_h192": 5.9,
    "imagenet_aft_conv_small_k11_h16": 20.3,
    "imagenet_aft_conv_small_k11_h384": 22.5,
    "imagenet_aft_conv_small_k15_h384": 23.0,
}
TABLE_8 = {
    "imagenet_deit_base_384": 86.9,
    "imagenet_aft_conv_base_k25_h32_ft384": 79.7,
    "imagenet_aft_conv_base_k25_h32_rand384": 79.7,
}
# Table 3: parameters of one AFT layer of AFT-local-256, L=24, d=256, T=3072, d'=64 (§5.1)
TABLE_3_PER_LAYER = {
    "cifar10_aft_local256_l24_d256": 0.6,  # factorized (default): 4d^2 + 4d + 2 T d'
    "cifar10_aft_local256_l24_d256_dense": 9.6,  # non factorized: 4d^2 + 4d + T^2
}


def assert_matches_paper(count: int, paper_millions: float) -> None:
    tolerance = max(0.15, 0.01 * paper_millions)
    assert abs(count / 1e6 - paper_millions) <= tolerance, f"{count / 1e6:.3f}M vs the paper's {paper_millions}M"


@pytest.mark.parametrize("name", sorted({**TABLE_7, **TABLE_8}))
def test_model_parameters_match_tables_7_and_8(name: str) -> None:
    model = build_on_meta(compose_experiment(name).model)
    assert_matches_paper(count_parameters(model), {**TABLE_7, **TABLE_8}[name])


@pytest.mark.parametrize("name", sorted(TABLE_3_PER_LAYER))
def test_aft_layer_parameters_match_table_3(name: str) -> None:
    model = build_on_meta(compose_experiment(name).model)
    layer_counts = {count_parameters(block.mixer) for block in model.blocks}
    assert len(layer_counts) == 1 and len(model.blocks) == 24
    assert_matches_paper(layer_counts.pop(), TABLE_3_PER_LAYER[name])


def test_tolerance_rejects_a_wrong_count() -> None:
    with pytest.raises(AssertionError):
        assert_matches_paper(5_900_000, 5.4)
