"""The miniature configs (configs/experiment/mini/) are their paper rows shrunk by their table's rule only."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from aft.commands.compare import config_leaves
from aft.commands.sweep import expand, load_tables
from aft.experiments import compose_experiment
from aft.miniature import (
    NOT_IN_MINIATURE,
    RULES,
    TABLE_RULES,
    canonical_miniature,
    config_text,
    kernel_size,
    mini_dir,
    miniature_names,
)
from aft.resources import config_dir
from aft.run_name import is_result_key

TABLES = load_tables()


def _resolved(name: str) -> dict[str, object]:
    leaves = config_leaves(OmegaConf.to_container(compose_experiment(name), resolve=False))  # interpolations as written
    return {key: value for key, value in leaves.items() if is_result_key(key)}


def test_every_table_has_a_miniature_of_each_row_and_nothing_else() -> None:
    on_disk = {path.name for path in mini_dir().iterdir()}
    assert on_disk == set(TABLE_RULES)
    assert set(TABLES) == set(TABLE_RULES) | set(NOT_IN_MINIATURE)
    for table in TABLE_RULES:
        rows = {path.stem for path in (mini_dir() / table).glob("*.yaml")}
        assert rows == set(expand(TABLES[table]["experiments"])), table


@pytest.mark.parametrize("name", miniature_names())
def test_miniature_is_its_paper_row_and_the_rule(name: str) -> None:
    """Every result key of the miniature equals the paper row's, except the rule's overrides (checked
    against the rule's values) and the swapped data module, whose keys shared with the paper's data
    config keep the paper's values (but the rule's documented ``data_changes``)."""
    _, table, experiment = name.split("/")
    assert (mini_dir() / table / f"{experiment}.yaml").read_text() == config_text(table, experiment), (
        "stale miniature: python -m aft.miniature"
    )
    rule = RULES[TABLE_RULES[table]]
    overrides = {key: value for key, (value, _) in rule.overrides(compose_experiment(experiment)).items()}
    paper, mini = _resolved(experiment), _resolved(name)
    for key in paper.keys() | mini.keys():
        if key in overrides:
            assert mini[key] == overrides[key], key
        elif key.startswith("data."):
            shared = key in paper and key in mini and key != "data._target_"
            if shared and key.removeprefix("data.") not in rule.data_changes:
                assert mini[key] == paper[key], key
        else:
            assert mini.get(key, "absent") == paper.get(key, "absent"), key
    data = OmegaConf.load(config_dir() / "data" / f"{rule.data}.yaml")
    assert mini["data._target_"] == data._target_


def test_rows_shared_by_tables_of_one_rule_train_once() -> None:
    assert canonical_miniature("table5", "enwik8_aft_local32_l24_d256") == "mini/table4/enwik8_aft_local32_l24_d256"
    assert canonical_miniature("table11", "imagenet_deit_small") == "mini/table7/imagenet_deit_small"
    assert canonical_miniature("table10", "imagenet_aft_conv_small_k7_h384") == (
        "mini/table10/imagenet_aft_conv_small_k7_h384"
    )
    with pytest.raises(ValueError, match="table8 has no miniature"):
        canonical_miniature("table8", "imagenet_deit_base_384")


def test_kernels_scale_by_half_width_from_the_14_to_the_8_grid() -> None:
    assert [kernel_size(k) for k in (3, 7, 11, 15, 25, 27)] == [3, 5, 7, 9, 13, 15]
