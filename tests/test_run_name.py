"""Run-folder names (aft/run_name.py) and the folder train.py picks from them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from aft.run_name import NON_RESULT_KEYS, is_result_key, result_config, result_overrides, run_name

ROOT = Path(__file__).resolve().parents[1]


def test_keys_that_do_not_change_the_result_leave_the_name_alone() -> None:
    overrides = [
        "data.root=/data/enwik8",
        "data.num_workers=8",
        "trainer.device=cuda",
        "trainer.resume=auto",
        "trainer.micro_batch_size=16",
        "logger.wandb_mode=offline",
        "hydra/launcher=slurm_v100",
        "experiment=enwik8_aft_local32_l24_d256",
    ]
    assert run_name("enwik8_aft_local32_l24_d256", overrides) == "enwik8_aft_local32_l24_d256"


def test_result_changing_overrides_give_a_short_stable_hash_in_any_order() -> None:
    a = run_name("x", ["model.mixer.window=16", "optim.lr=1e-3", "data.root=/a"])
    b = run_name("x", ["optim.lr=1e-3", "data.root=/b", "model.mixer.window=16"])
    assert a == b and len(a) == len("x-") + 8
    assert run_name("x", ["model.mixer.window=32", "optim.lr=1e-3"]) != a
    assert result_overrides(["+model.extra=1", "~trainer.log_every", "model/mixer=aft_simple"]) == [
        "+model.extra=1",
        "model/mixer=aft_simple",
    ]


def test_a_long_list_of_overrides_still_gives_a_short_name() -> None:
    overrides = [f"model.option_{i}={'v' * 40}" for i in range(40)]
    assert len(run_name("enwik8_aft_local32_l24_d256", overrides)) < 40


def test_result_config_drops_exactly_the_listed_keys() -> None:
    config = {"data": {"root": "/a", "seq_len": 8}, "trainer": {"device": "cpu", "batch_size": 4}, "logger": {"x": 1}}
    assert result_config(config) == {"data": {"seq_len": 8}, "trainer": {"batch_size": 4}}
    assert config["data"]["root"] == "/a"  # a copy
    assert all(not is_result_key(key) for key in NON_RESULT_KEYS) and is_result_key("trainer.batch_size")


def _run_dir(*overrides: str) -> str:
    result = subprocess.run(
        [sys.executable, "train.py", *overrides, "--cfg", "hydra", "--resolve"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    return lines[lines.index("  run:") + 1].split("dir: ")[1]


def test_train_py_names_its_folder_by_experiment_and_hash() -> None:
    assert _run_dir() == "runs/embedded_text_aft_local"
    assert (
        _run_dir("experiment=enwik8_aft_local32_l24_d256", "data.root=/data/enwik8")
        == "runs/enwik8_aft_local32_l24_d256"
    )
    assert _run_dir("model.dim=64", "trainer.device=cpu") == "runs/" + run_name(
        "embedded_text_aft_local", ["model.dim=64"]
    )
