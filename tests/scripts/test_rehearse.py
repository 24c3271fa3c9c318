"""rehearse.py (aft/commands/rehearse.py): its shrinking keeps what defines each experiment, its CI subset covers every
table and code path, its checks catch a broken resume; and (``AFT_REHEARSAL=1``) the CI subset's
whole lives, run as CI runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from aft.commands import rehearse
from aft.experiments import build_on_meta, compose_experiment, count_parameters, experiment_names

ROOT = Path(__file__).resolve().parents[2]

# What defines a row: kept exactly by the shrink (lengths and sizes may change).
DEFINING = (
    "model._target_",
    "model.model_name",
    "model.mixer._target_",
    "model.mixer.causal",
    "model.mixer.use_query",
    "model.mixer.reparam",
    "model.mixer.global_connectivity",
    "model.mixer.gumbel_tau",
    "model.mixer.qk_ratio",
    "model.dropout",
    "model.drop_path_rate",
    "model.drop_rate",
    "model.class_token",
    "model.position_embedding",
    "model.mlp_ratio",
    "data._target_",
    "data.auto_augment",
    "data.re_prob",
    "data.mixup",
    "data.cutmix",
    "data.label_smoothing",
    "data.repeated_aug",
    "optim",
    "schedule._target_",
    "trainer.precision",
    "trainer.grad_clip",
    "trainer.sparsity_weight",
    "model_init._target_",
)


def _value(cfg, key: str):
    return OmegaConf.select(cfg, key, default="<absent>")


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory):
    return rehearse.Fixtures(tmp_path_factory.mktemp("data"))  # paths only: nothing is read here


@pytest.mark.parametrize("name", experiment_names())
def test_shrink_keeps_what_defines_the_experiment(name: str, fixtures) -> None:
    paper = compose_experiment(name)
    tiny = compose_experiment(name, rehearse.experiment_overrides(paper, fixtures))
    for key in DEFINING:
        assert _value(tiny, key) == _value(paper, key), key
    mixer = paper.model.get("mixer")
    if mixer is not None and "bias_dim" in mixer:
        assert (tiny.model.mixer.bias_dim is None) == (mixer.bias_dim is None)  # dense stays dense
    assert tiny.trainer.max_steps == rehearse.STEPS and tiny.trainer.device == "cpu"
    model = instantiate(tiny.model) if paper.model._target_ == "timm.create_model" else build_on_meta(tiny.model)
    tiny_count = count_parameters(model)
    dense_bias = OmegaConf.select(tiny, "model.mixer.bias_dim", default=0) is None  # T x T at CIFAR's fixed T
    assert tiny_count < 1_000_000 or dense_bias, tiny_count


def test_ci_subset_covers_every_table_and_code_path() -> None:
    configs = {name: compose_experiment(name) for name in experiment_names()}
    tables = rehearse.paper_tables()
    subset = rehearse.ci_subset(configs, tables)
    every = set().union(*(rehearse.code_paths(cfg) for cfg in configs.values()))
    assert set().union(*(rehearse.code_paths(configs[name]) for name in subset)) == every
    assert set().union(*tables.values()) == set().union(*(tables.get(name, set()) for name in subset))
    assert len(subset) < len(configs) // 2
    own_paths = (  # the rows the paper varies one switch for: each is the only row with its switch
        "cifar10_aft_local256_l24_d256_dense",
        "imagenet_aft_full_small_dense",
        "imagenet_aft_conv_small_k11_h384_noq",
        "imagenet_aft_conv_small_k11_h384_gumbel",
        "imagenet_aft_conv_small_k11_h384_sparsity",
        "imagenet_aft_conv_small_k7_h384_local_only",
        "imagenet_aft_conv_small_k7_h384_naive",
        "imagenet_aft_conv_small_k15_h384_eval384",
        "imagenet_aft_conv_base_k25_h32_ft384",
    )
    assert set(own_paths) <= set(subset)
    mixers = {cfg.model.mixer._target_ for cfg in configs.values() if "mixer" in cfg.model}
    assert mixers <= {configs[name].model.mixer._target_ for name in subset if "mixer" in configs[name].model}


def _run_folder(tmp_path: Path, starts: list[int], losses: dict[int, float]) -> Path:
    (tmp_path / "provenance.jsonl").write_text("".join(json.dumps({"start_step": s}) + "\n" for s in starts))
    records = [{"step": step, "train_loss": loss} for step, loss in sorted(losses.items())]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return tmp_path


def test_resume_check_accepts_the_same_curve_and_names_the_first_changed_step(tmp_path: Path) -> None:
    curve = {step: 5.0 - 0.01 * step for step in range(1, rehearse.STEPS + 1)}
    before_kill = {step: curve[step] for step in range(1, rehearse.KILL_AT + 2)}
    run = _run_folder(tmp_path, [0, rehearse.CHECKPOINT_EVERY], curve)
    assert rehearse._check_resume(run, before_kill) == rehearse.CHECKPOINT_EVERY
    changed = {**before_kill, rehearse.KILL_AT: curve[rehearse.KILL_AT] + 1e-3}
    with pytest.raises(rehearse.StageError, match=f"step {rehearse.KILL_AT}: loss"):
        rehearse._check_resume(run, changed)
    restarted = _run_folder(tmp_path, [0, 0], curve)
    with pytest.raises(rehearse.StageError, match="did not resume"):
        rehearse._check_resume(restarted, before_kill)
    gap = _run_folder(tmp_path, [0, rehearse.CHECKPOINT_EVERY], {s: v for s, v in curve.items() if s != 9})
    with pytest.raises(rehearse.StageError, match=r"steps \[9\]"):
        rehearse._check_resume(gap, before_kill)


@pytest.mark.skipif(os.environ.get("AFT_REHEARSAL") != "1", reason="~12 min: AFT_REHEARSAL=1 runs the CI subset")
@pytest.mark.timeout(1500)
def test_ci_subset_lives_whole() -> None:
    command = [sys.executable, str(ROOT / "scripts" / "rehearse.py"), "--ci"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    lines = [line for line in result.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert result.returncode == 0, "\n".join(line for line in lines if line.startswith("FAIL")) or result.stderr[-3000:]
    assert len([line for line in lines if line.startswith("PASS")]) >= 10
