"""train.py and eval.py end to end, as a user runs them (subprocesses, tiny configs, CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from aft.experiments import compose_config
from aft.provenance import code_revision
from aft.training.checkpoint import load
from aft.training.logger import read_metrics
from aft.training.trainer import PROVENANCE_FILE, train
from data.base import DataModule

ROOT = Path(__file__).resolve().parents[2]
# The README's main command (the embedded default), shrunk so each run takes seconds.
TINY = [
    "model.depth=1",
    "model.dim=32",
    "data.seq_len=32",
    "model.dropout=0.0",
    "trainer.batch_size=8",
    "trainer.eval_batch_size=16",
    "trainer.eval_batches=2",
    "schedule.warmup_steps=5",
]
LOCAL_MIXER = ["model.mixer.window=8", "model.mixer.bias_dim=8"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _train(
    run_dir: Path, *overrides: str, check: bool = True, mixer: list[str] = LOCAL_MIXER, base: list[str] = TINY
) -> subprocess.CompletedProcess:
    command = [sys.executable, "train.py", *base, *mixer, *overrides, f"hydra.run.dir={run_dir}"]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"train.py failed:\n{result.stderr[-3000:]}")
    return result


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["train_loss"] for r in read_metrics(run_dir) if "train_loss" in r}


def test_main_command_trains_loss_falls_and_evaluates(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _train(run, "trainer.max_steps=60", "trainer.log_every=5", "trainer.eval_every=30", "trainer.checkpoint_every=30")
    losses = list(_losses(run).values())
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    assert (run / "checkpoints" / "last.pt").exists() and (run / ".hydra" / "config.yaml").exists()
    records = read_metrics(run)
    assert {"valid_bits", "test_bits"} <= {k for r in records for k in r}
    out = tmp_path / "records"
    result = subprocess.run(
        [sys.executable, "eval.py", f"run={run}", "splits=[test]", "speed=true", "speed_batch_size=4", f"out={out}"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (record_file,) = out.glob("*.json")
    record = json.loads(record_file.read_text())
    assert record["experiment"] == "embedded_text_aft_local" and record["split"] == "test"
    assert record["metrics"]["unit"] == "bpc" and record["metrics"]["complete"]
    final_test = [r["test_bits"] for r in records if "test_bits" in r][-1]
    assert record["metrics"]["bits"] == pytest.approx(final_test, rel=1e-5)
    assert record["metrics"]["samples_per_sec"] > 0 and record["step"] == 60
    assert record["commit"] == code_revision() and record["command"].startswith("python eval.py")


def test_killed_run_resumes_on_the_same_curve(tmp_path: Path) -> None:
    steps = ["trainer.max_steps=40", "trainer.log_every=1", "trainer.checkpoint_every=4", "trainer.eval_every=0"]
    reference = tmp_path / "uninterrupted"
    _train(reference, *steps)
    run = tmp_path / "killed"
    command = [sys.executable, "train.py", *TINY, *LOCAL_MIXER, *steps, f"hydra.run.dir={run}"]
    process = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and max(_losses(run), default=0) < 10 and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = max(_losses(run))
    assert process.returncode == -signal.SIGKILL and killed_at < 40, "the run ended before it could be killed"
    _train(run, *steps)  # the same command again: resumes from the last checkpoint
    expected, resumed = _losses(reference), _losses(run)
    assert sorted(resumed) == list(range(1, 41))
    for step in range(1, 41):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step
    starts = [json.loads(line) for line in (run / PROVENANCE_FILE).read_text().splitlines()]
    assert len(starts) == 2 and starts[0]["start_step"] == 0 and 0 < starts[1]["start_step"] <= killed_at
    assert all(start["commit"] == code_revision() and start["world_size"] == 1 for start in starts)


def test_sigterm_checkpoints_the_current_step_and_exits(tmp_path: Path) -> None:
    """SLURM preemption: the run saves the step it is at, exits 75 (not finished), and the relaunch resumes there."""
    run = tmp_path / "run"
    steps = ["trainer.max_steps=400", "trainer.log_every=1", "trainer.checkpoint_every=1000", "trainer.eval_every=0"]
    command = [sys.executable, "train.py", *TINY, *LOCAL_MIXER, *steps, f"hydra.run.dir={run}"]
    process = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and max(_losses(run), default=0) < 5 and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=120)
    assert process.returncode == 75 and "stopped by SIGTERM" in stdout
    stopped_at = int(stdout.split(" at step ")[1].split(",")[0])
    assert 5 <= stopped_at < 400 and load(run / "checkpoints" / "last.pt")["step"] == stopped_at


def test_two_process_ddp_matches_one_process(tmp_path: Path) -> None:
    steps = ["trainer.max_steps=6", "trainer.log_every=1", "trainer.eval_every=0", "trainer.device=cpu"]
    single = tmp_path / "single"
    _train(single, *steps, "trainer.micro_batch_size=4")  # 2 accumulated micro-batches of 4
    ddp = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29517",
        "train.py",
        *TINY,
        *LOCAL_MIXER,
        *steps,
        f"hydra.run.dir={ddp}",
    ]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    expected, got = _losses(single), _losses(ddp)
    assert (result.stdout + result.stderr).count("data {") == 1  # the data record is logged by rank 0 only
    start = json.loads((ddp / PROVENANCE_FILE).read_text().splitlines()[0])
    assert start["launcher"] == "torchrun" and start["command"].startswith("torchrun --nnodes=1 --nproc_per_node=2 ")
    assert "trainer.max_steps=6" in start["overrides"]
    assert sorted(got) == list(range(1, 7))
    for step in got:
        assert got[step] == pytest.approx(expected[step], rel=1e-5), step


def test_corrupt_checkpoint_is_reported(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _train(run, "trainer.max_steps=4", "trainer.checkpoint_every=2", "trainer.eval_every=0")
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    result = _train(run, "trainer.max_steps=8", "trainer.checkpoint_every=2", "trainer.eval_every=0", check=False)
    assert result.returncode == 1
    assert "corrupt" in result.stderr and "prev.pt" in result.stderr


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.mixer.window=1000"], "set model.mixer.window"),
        (["model/mixer=aft_conv1d", "model.mixer.heads=3", "model.mixer.kernel_size=3"], "set model.mixer.heads"),
        (["experiment=no_such_row"], "Could not find 'experiment/no_such_row'"),
        (["experiment=enwik8_aft_local32_l24_d256", "data.root=/nonexistent"], "set data.root"),
        (["trainer.batch_size=6", "trainer.micro_batch_size=4"], "trainer.batch_size=6 must be a multiple"),
    ],
)
def test_bad_configs_give_one_line_errors(tmp_path: Path, overrides: list[str], message: str) -> None:
    mixer = [] if any(o.startswith("model/mixer=") for o in overrides) else LOCAL_MIXER
    result = _train(tmp_path / "run", "trainer.max_steps=2", *overrides, check=False, mixer=mixer)
    assert result.returncode != 0
    assert message in result.stderr
    if not message.startswith("Could not"):  # Hydra's own composition errors list the options
        assert "Traceback" not in result.stderr and result.stderr.strip().splitlines()[-1].startswith("error: ")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = _train(
        run,
        "trainer.max_steps=50",
        "optim.lr=1e30",
        "trainer.grad_clip=0",
        "trainer.checkpoint_every=1",
        "trainer.eval_every=0",
        check=False,
    )
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: non-finite training loss at step ") and "optim.lr" in last_line
    failed_at = int(last_line.split("at step ")[1].split(";")[0])
    state = load(run / "checkpoints" / "last.pt")
    # last.pt holds good weights only: its window's loss is finite and within 2x of the best
    assert state["step"] < failed_at and state["loss_guard"]["best"] < 10
    again = _train(
        run,
        "trainer.max_steps=50",
        "optim.lr=1e30",
        "trainer.grad_clip=0",
        "trainer.checkpoint_every=1",
        "trainer.eval_every=0",
        check=False,
    )
    last_line = again.stderr.strip().splitlines()[-1]
    assert again.returncode == 1 and "the same command would repeat it" in last_line  # no loop on the same NaN
    assert "trainer.resume=" in last_line and "trainer.grad_clip=1.0" in last_line and "precision" not in last_line


# The classification demo, shrunk: the ViT path (its held-out split is "test").
IMAGES = [
    "experiment=embedded_images_aft_conv",
    "data.image_size=16",
    "model.depth=1",
    "model.dim=16",
    "model.mixer.heads=4",
    "data.num_train=64",
    "data.num_test=32",
    "trainer.batch_size=8",
    "trainer.eval_batch_size=16",
    "trainer.eval_batches=2",
]


def test_a_classification_run_evaluates_its_valid_split_after_checkpointing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _train(run, "trainer.max_steps=4", "trainer.eval_every=2", "trainer.checkpoint_every=2", mixer=[], base=IMAGES)
    records = read_metrics(run)
    assert [r["step"] for r in records if "test_loss" in r] == [2, 4]
    assert next(r for r in records if "test_loss" in r)["test_count"] == 2 * 16  # eval_batches x eval_batch_size


def test_a_failing_periodic_evaluation_keeps_the_steps_checkpoint(tmp_path: Path, monkeypatch) -> None:
    def failing_evaluation(*args, **kwargs):
        raise RuntimeError("evaluation failed")

    cfg = compose_config(
        [
            *TINY,
            *LOCAL_MIXER,
            "trainer.max_steps=6",
            "trainer.eval_every=3",
            "trainer.checkpoint_every=3",
            "trainer.device=cpu",
        ]
    )
    monkeypatch.setattr(DataModule, "eval_dataloader", failing_evaluation)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        train(cfg, tmp_path / "run")
    assert load(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 3


def test_initial_weights_do_not_depend_on_rng_drawn_while_the_data_loads(tmp_path: Path, monkeypatch) -> None:
    """A data module may draw from torch's RNG at start-up (ImageNet's did, a varying amount): the
    initial weights, hence the first loss, must be the same at every launch."""
    from data.embedded_text import EmbeddedText

    cfg = compose_config(
        [
            *TINY,
            *LOCAL_MIXER,
            "trainer.max_steps=1",
            "trainer.eval_every=0",
            "trainer.log_every=1",
            "trainer.device=cpu",
        ]
    )
    original = EmbeddedText.__init__
    first_losses = []
    for draws in (0, 5):

        def drawing_init(self, *args, _draws=draws, **kwargs):
            original(self, *args, **kwargs)
            torch.rand(_draws)

        monkeypatch.setattr(EmbeddedText, "__init__", drawing_init)
        train(cfg, tmp_path / f"draws{draws}")
        first_losses.append(_losses(tmp_path / f"draws{draws}")[1])
    assert first_losses[0] == first_losses[1]


def test_a_finished_run_relaunched_prints_its_final_metrics_and_adds_nothing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = _train(run, "trainer.max_steps=4", "trainer.checkpoint_every=2", "trainer.eval_every=0")
    finals = [line for line in first.stdout.splitlines() if line.startswith("final ")]
    assert [line.split(":")[0] for line in finals] == ["final valid", "final test"]
    assert json.loads(finals[1].split(": ", 1)[1])["count"] > 0
    assert load(run / "checkpoints" / "prev.pt")["step"] == 2  # the last step is saved once
    records = read_metrics(run)
    again = _train(run, "trainer.max_steps=4", "trainer.checkpoint_every=2", "trainer.eval_every=0")
    assert read_metrics(run) == records and load(run / "checkpoints" / "prev.pt")["step"] == 2
    assert (
        "finished at step 4" in again.stdout
        and [line for line in again.stdout.splitlines() if line.startswith("final ")] == finals
    )


def test_a_changed_learning_rate_is_applied_on_resume(tmp_path: Path) -> None:
    first = tmp_path / "first"
    steps = ["trainer.max_steps=8", "trainer.log_every=1", "trainer.eval_every=0", "schedule.warmup_steps=1"]
    _train(first, *steps, "trainer.checkpoint_every=4")
    lr = {r["step"]: r["lr"] for r in read_metrics(first) if "lr" in r}
    second = tmp_path / "second"
    state = load(first / "checkpoints" / "prev.pt")
    assert state["step"] == 4
    result = _train(second, *steps, "optim.lr=1e-4", f"trainer.resume={first / 'checkpoints' / 'prev.pt'}")
    resumed = {r["step"]: r["lr"] for r in read_metrics(second) if "lr" in r}
    assert sorted(resumed) == [5, 6, 7, 8]
    assert resumed[5] == pytest.approx(lr[5] * 1e-4 / 3e-3) and "changed optim.lr" in result.stdout


def test_wandb_offline_logs_the_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = {**ENV, "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    command = [
        sys.executable,
        "train.py",
        *TINY,
        *LOCAL_MIXER,
        "trainer.max_steps=2",
        "trainer.eval_every=0",
        "logger.wandb_mode=offline",
        f"hydra.run.dir={run}",
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "wandb_id.txt").read_text() and list((run / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.device=cuda"], "set trainer.device=cpu"),
        (["logger.wandb_mode=online"], "run `wandb login`"),
        (["model.num_classes=7"], "set model.num_classes=10"),
        (["trainer.resume=/no/such.pt"], "trainer.resume=/no/such.pt is not a checkpoint file"),
    ],
)
def test_environment_mistakes_give_one_line_errors(tmp_path: Path, overrides: list[str], message: str) -> None:
    if "trainer.device=cuda" in overrides and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    env = {k: v for k, v in ENV.items() if k != "WANDB_API_KEY"} | {"HOME": str(tmp_path)}  # no wandb credentials
    base, mixer = (IMAGES, []) if "model.num_classes=7" in overrides else (TINY, LOCAL_MIXER)
    command = [
        sys.executable,
        "train.py",
        *base,
        *mixer,
        "trainer.max_steps=2",
        *overrides,
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, result.stderr[-2000:]


def test_the_weight_average_is_checkpointed_resumed_and_evaluated(tmp_path: Path) -> None:
    steps = ["trainer.log_every=1", "trainer.eval_every=0", "trainer.checkpoint_every=3", "trainer.ema_decay=0.9"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    _train(whole, *steps, "trainer.max_steps=6")
    _train(resumed, *steps, "trainer.max_steps=3")
    _train(resumed, *steps, "trainer.max_steps=6")
    a, b = (load(run / "checkpoints" / "last.pt") for run in (whole, resumed))
    assert a["step"] == b["step"] == 6
    for key, value in a["model_ema"].items():
        assert torch.allclose(value, b["model_ema"][key], atol=1e-6), key
    assert any(
        not torch.equal(a["model_ema"][k], a["model"][k]) for k in a["model"] if a["model"][k].is_floating_point()
    )
    final = json.loads((whole / "final.json").read_text())
    assert {"valid", "valid_ema", "test", "test_ema"} <= set(final)
    assert final["test_ema"]["loss"] != final["test"]["loss"]
