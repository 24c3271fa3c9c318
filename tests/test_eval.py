"""eval.py as a user runs it, on a tiny CPU run: where records go, what they carry, and one line
naming the fix for every user error (in subprocesses where the process boundary matters, else
through ``aft.commands.eval.main`` with the command line in ``sys.argv``, which is what
``python eval.py`` runs)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from aft.commands import eval as eval_command
from aft.experiments import compose_config, compose_experiment
from aft.resources import config_dir
from aft.run_name import result_config
from aft.training.distributed import DistInfo
from aft.training.evaluate import evaluate
from aft.training.logger import read_metrics

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TINY = [
    "model.depth=1",
    "model.dim=32",
    "data.seq_len=32",
    "trainer.batch_size=4",
    "trainer.max_steps=4",
    "trainer.log_every=1",
    "trainer.eval_every=0",
    "trainer.device=cpu",
]
# A tiny AFT-conv ViT on the embedded images whose model has 1000 outputs for the data's 10 classes
# (without the keys the default experiment sets for its decoder).
IMAGES_1000_OUTPUTS = [
    "model=vit",
    "model/mixer=aft_conv2d",
    "data=embedded_images",
    "model.img_size=16",
    "model.patch_size=4",
    "model.depth=1",
    "model.dim=16",
    "model.mixer.heads=4",
    "model.mixer.kernel_size=3",
    "data.image_size=16",
    "data.num_train=64",
    "data.num_test=32",
    "data.num_workers=0",
    "~model.seq_len",
    "~model.vocab_size",
    "~model.dropout",
    "~data.seq_len",
]
ENWIK8 = "enwik8_aft_local32_l24_d256"


def _eval(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "eval.py", *args]
    return subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)


def _main(monkeypatch: pytest.MonkeyPatch, *arguments: str) -> None:
    """``python eval.py <arguments>`` in this process."""
    monkeypatch.setattr(sys, "argv", ["eval.py", *arguments])
    eval_command.main()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-step run of the quick start's model, shrunk, every step's training loss logged."""
    run_dir = tmp_path_factory.mktemp("eval") / "run"
    command = [sys.executable, "train.py", *TINY, f"hydra.run.dir={run_dir}"]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def _fake_run(folder: Path, cfg) -> Path:
    """A run folder holding ``cfg`` as train.py saves it (interpolations unresolved) and an empty checkpoint."""
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.pt").touch()
    return folder


def _tree_status() -> str:
    result = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=all", "results"],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def test_records_go_into_the_run_folder_with_the_config_and_the_training_objective(run: Path) -> None:
    before = _tree_status()
    result = _eval(f"run={run}", "splits=test")  # one split by name; a list is splits=[valid,test]
    assert result.returncode == 0, result.stderr[-3000:]
    assert _tree_status() == before  # nothing written to the tracked results/
    (path,) = (run / "eval").glob("*.json")
    record = json.loads(path.read_text())
    assert record["experiment"] == "embedded_text_aft_local" and record["split"] == "test" and record["step"] == 4
    expected = OmegaConf.to_container(compose_experiment("embedded_text_aft_local", TINY), resolve=True)
    assert result_config(record["config"]) == result_config(expected)
    losses = [r["train_loss"] for r in read_metrics(run) if "train_loss" in r]
    objective = record["train_objective"]
    assert (
        len(losses) == 4
        and objective["logged_steps"] == 4
        and (objective["first_step"], objective["last_step"]) == (1, 4)
    )
    assert objective["loss"] == pytest.approx(sum(losses) / 4, rel=1e-12)
    curves = record["history"]  # the learning curves outlive the run folder
    assert curves["valid_split"] == "valid" and curves["series"]["train_loss"]["step"] == [1, 2, 3, 4]
    assert curves["series"]["train_loss"]["value"] == pytest.approx(losses, rel=1e-5)
    assert curves["series"]["valid_bits"]["step"] == [4]  # eval_every=0: the final evaluation only


def test_an_experiment_in_a_folder_is_one_record_file_in_out(tmp_path: Path) -> None:
    record = {"experiment": "mini/table9/imagenet_aft_full_small", "config_hash": "0" * 12, "split": "val"}
    path = eval_command._write({**record, "weights": "model"}, tmp_path, [])
    assert path == tmp_path / f"mini__table9__imagenet_aft_full_small-{'0' * 12}-val.json" and path.is_file()


def test_a_missing_run_folder_is_one_line_on_stderr_and_exit_1(tmp_path: Path) -> None:
    result = _eval(f"run={tmp_path / 'no-run'}")
    assert result.returncode == 1 and result.stdout == ""
    hint = "give a run folder written by train.py (runs/<name>) or a checkpoint file"
    assert result.stderr == f"error: {tmp_path / 'no-run'} does not exist: {hint}\n"


def _one_line_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *arguments: str) -> str:
    with pytest.raises(SystemExit) as stopped:
        _main(monkeypatch, *arguments)
    lines = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 1 and len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize(
    ("arguments", "fix"),
    [
        (["model.vocab_size=10"], ["does not fit", "model.* overrides"]),
        (["splits=[val]"], ["splits=[val]: this run's data has the splits valid test train"]),
        (["device=gpu"], ["use auto, cpu or cuda"]),
        (["weights=ema"], ["weights='ema': use one of model, model_ema"]),
        (["precision=fp8"], ["precision='fp8': use one of fp32, fp16, bf16"]),
    ],
)
def test_user_errors_of_a_run_are_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, run: Path, arguments: list[str], fix: list[str]
) -> None:
    checkpoint = run / "checkpoints" / "last.pt"
    line = _one_line_error(monkeypatch, capsys, f"run={checkpoint}", *arguments, f"out={run / 'x'}")
    assert all(part in line for part in fix), line


def test_no_run_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    assert "give run=runs/<name>" in _one_line_error(monkeypatch, capsys, "splits=[test]")


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        (
            "data.seq_lenn=64",
            ["Could not override 'data.seq_lenn'", "+data.seq_lenn=64"],
        ),  # a misspelt key of the run's
        ("splitz=[test]", ["Could not override 'splitz'"]),  # a misspelt option
        ("data.seq_len", ["Error parsing override 'data.seq_len'"]),
    ],
)
def test_a_command_line_hydra_cannot_compose_is_reported_as_train_py_reports_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, run: Path, argument: str, message: list[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        _main(monkeypatch, f"run={run}", argument)
    err = capsys.readouterr().err
    assert stopped.value.code == 1 and all(part in err for part in message) and "Traceback" not in err, err


def test_an_override_applies_to_the_saved_config_and_is_recorded(monkeypatch: pytest.MonkeyPatch, run: Path) -> None:
    """train.py's override syntax on the run's saved config: a replaced key and an added one, typed by Hydra."""
    out = run / "overridden"
    _main(monkeypatch, f"run={run}", "splits=[test]", "data.eval_stride=16", "+trainer.note=[1,2]", f"out={out}")
    (path,) = out.glob("*.json")
    record = json.loads(path.read_text())
    assert record["overrides"] == ["data.eval_stride=16", "+trainer.note=[1,2]"]
    assert record["config"]["data"]["eval_stride"] == 16 and record["config"]["trainer"]["note"] == [1, 2]
    assert "splits" not in record["config"] and "run" not in record["config"]  # eval's options are not the run's config


def test_the_options_are_no_top_level_key_of_a_training_config() -> None:
    """The run's config is composed in beside eval's options: no key may be both. The training
    configs' top-level keys: train.yaml's groups and keys, and every experiment's (global package)."""
    options = set(OmegaConf.load(config_dir() / "eval.yaml")) - {"defaults", "hydra"}
    train = OmegaConf.load(config_dir() / "train.yaml")
    groups = {next(iter(entry)) for entry in train.defaults if not isinstance(entry, str)}
    experiments = [OmegaConf.load(path) for path in (config_dir() / "experiment").rglob("*.yaml")]
    run_keys = groups | set(train) | {key for cfg in experiments for key in cfg}
    assert "model_init" in run_keys and options == {
        "run",
        "splits",
        "out",
        "weights",
        "device",
        "precision",
        "batch_size",
        "speed",
        "speed_batch_size",
    }
    assert not options & run_keys, options & run_keys


def test_a_missing_data_path_is_one_line(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    run_dir = _fake_run(tmp_path / "enwik8", compose_experiment(ENWIK8))
    monkeypatch.setenv("AFT_DATA_ROOT", str(tmp_path / "no-data"))
    line = _one_line_error(monkeypatch, capsys, f"run={run_dir}")
    assert f"not found at {tmp_path / 'no-data' / 'enwik8'}: set data.root" in line


def test_an_unresolvable_saved_interpolation_is_one_line(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = compose_experiment(ENWIK8)
    cfg.data.root = "${oc.env:AFT_EVAL_TEST_UNSET}/enwik8"
    run_dir = _fake_run(tmp_path / "enwik8", cfg)
    monkeypatch.delenv("AFT_EVAL_TEST_UNSET", raising=False)
    line = _one_line_error(monkeypatch, capsys, f"run={run_dir}")
    assert "data.root: ${oc.env:AFT_EVAL_TEST_UNSET}/enwik8 cannot be resolved" in line and "data.root=<value>" in line
    assert "not found at" in _one_line_error(
        monkeypatch, capsys, f"run={run_dir}", f"data.root={tmp_path}"
    )  # the fix works


def test_a_model_without_an_output_per_class_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    run_dir = _fake_run(tmp_path / "images", compose_config(IMAGES_1000_OUTPUTS))
    line = _one_line_error(monkeypatch, capsys, f"run={run_dir}")
    assert "the data has 10 classes but the model has 1000 outputs: set model.num_classes=10" in line


def test_a_cuda_device_needs_a_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ValueError, match="device=cuda: no GPU is visible here; use device=cpu"):
        eval_command.eval_device("cuda")


def test_an_empty_checkpoint_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, run: Path, tmp_path: Path
) -> None:
    """A zero-length last.pt (a full disk) is named as corrupt, not an IndexError from its empty message."""
    copy = tmp_path / "run"
    (copy / ".hydra").mkdir(parents=True)
    (copy / ".hydra" / "config.yaml").write_text((run / ".hydra" / "config.yaml").read_text())
    (copy / "checkpoints").mkdir()
    (copy / "checkpoints" / "last.pt").write_bytes(b"")
    line = _one_line_error(monkeypatch, capsys, f"run={copy}")
    assert f"checkpoint {copy / 'checkpoints' / 'last.pt'} is corrupt or unreadable" in line


def test_the_weight_average_is_evaluated_on_request(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    run_dir = tmp_path / "ema"
    command = [sys.executable, "train.py", *TINY, "trainer.ema_decay=0.5", f"hydra.run.dir={run_dir}"]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    _main(monkeypatch, f"run={run_dir}", "splits=[test]", "weights=model_ema")
    _main(monkeypatch, f"run={run_dir}", "splits=[test]")
    records = {r["weights"]: r for r in (json.loads(p.read_text()) for p in (run_dir / "eval").glob("*.json"))}
    final = json.loads((run_dir / "final.json").read_text())
    assert records["model_ema"]["metrics"]["loss"] == pytest.approx(final["test_ema"]["loss"], rel=1e-6)
    assert records["model"]["metrics"]["loss"] == pytest.approx(final["test"]["loss"], rel=1e-6)


def test_a_run_without_an_average_says_how_to_get_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, run: Path
) -> None:
    line = _one_line_error(monkeypatch, capsys, f"run={run}", "weights=model_ema", f"out={run / 'x'}")
    assert "holds no 'model_ema' weights" in line and "trainer.ema_decay" in line


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("stderr", "rank", "shown"), [(_Terminal, 0, True), (io.StringIO, 0, False), (_Terminal, 1, False)]
)
def test_a_whole_split_shows_a_progress_bar_on_rank_0_of_a_terminal(
    monkeypatch: pytest.MonkeyPatch, stderr: type, rank: int, shown: bool
) -> None:
    stream = stderr()
    monkeypatch.setattr(sys, "stderr", stream)
    batches = [(torch.randn(2, 3), torch.tensor([0, 1])) for _ in range(3)]
    dist = DistInfo(rank=rank, world_size=1, local_rank=0, device=torch.device("cpu"))
    evaluate(torch.nn.Linear(3, 2), batches, "classification", dist, progress="test")
    bar = stream.getvalue()
    assert ("test:" in bar and "0/3 [" in bar) == shown and (bar == "") != shown, bar
