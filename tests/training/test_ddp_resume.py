"""2-process runs (torchrun, gloo on the CPU) killed mid-run resume to the uninterrupted run's losses.

One experiment per backbone, shrunk as ``aft/commands/rehearse.py`` shrinks it, on its tiny real-format
files: the enwik8 decoder (dropout 0.1) and an ImageNet AFT-conv ViT (drop-path 0.1, RandAugment,
random erasing, Mixup/CutMix, repeated augmentation) reading with ``data.num_workers=2``. torchrun
and every worker are SIGKILLed at once (``rehearse.kill_tree``: the workers run in sessions of their
own, out of reach of ``os.killpg``), the same command resumes, and every step's loss must equal the
uninterrupted run's to 1e-5.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from aft.commands import rehearse
from aft.experiments import compose_experiment

ROOT = Path(__file__).resolve().parents[2]

EXPERIMENTS = ("enwik8_aft_local32_l24_d256", "imagenet_aft_conv_small_k7_h384")


def torchrun(name: str, fixtures) -> list[str]:
    overrides = rehearse.experiment_overrides(compose_experiment(name), fixtures)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return [*launcher, str(ROOT / "train.py"), f"experiment={name}", *overrides]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory):
    return rehearse.write_fixtures(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_killed_two_process_run_resumes_to_the_same_losses(tmp_path: Path, fixtures, name: str) -> None:
    command = torchrun(name, fixtures)
    assert any(item == "data.num_workers=2" for item in command)
    reference, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    reference.mkdir()
    killed.mkdir()
    rehearse.run_stage("uninterrupted", command, reference, reference / "log")
    run_dir, before_kill = rehearse.kill_mid_run(command, killed, killed / "log")
    assert max(before_kill) < rehearse.STEPS
    rehearse.run_stage("resume", command, killed, killed / "resumed.log")
    expected = rehearse.train_losses(rehearse.read_records(rehearse.find_run(reference)))
    resumed = rehearse.train_losses(rehearse.read_records(run_dir))
    assert sorted(expected) == sorted(resumed) == list(range(1, rehearse.STEPS + 1))
    assert "resumed from" in (killed / "resumed.log").read_text()
    for step in expected:
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step
