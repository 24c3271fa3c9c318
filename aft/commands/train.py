"""Train a model of the paper (or any composition of configs/): a Hydra app.

    python train.py                                   # the embedded default, CPU-friendly (aft-train, installed)
    python train.py experiment=enwik8_aft_local32_l24_d256 data.root=/data/enwik8
    torchrun --nproc_per_node=8 train.py experiment=cifar10_aft_local256_l24_d256
    python train.py -m hydra/launcher=slurm_v100 experiment=enwik8_aft_local32_l24_d256 model.mixer.window=16,32,64

The run folder is runs/<experiment>[-<hash of the overrides that change the result>]
(aft/run_name.py) in the current folder: the same command writes to, and resumes from, the same
folder. The configs are the checkout's configs/ or an installed package's copy (aft/resources.py).
Configuration mistakes and bad data stop the run with one line that names the fix (aft/cli.py).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from aft.cli import user_errors_exit
from aft.config_help import experiments_text, groups_text
from aft.resources import config_search_path
from aft.run_name import run_name
from aft.training.trainer import train

OmegaConf.register_new_resolver("run_name", lambda experiment, overrides: run_name(experiment, overrides), replace=True)
OmegaConf.register_new_resolver("help_experiments", experiments_text, replace=True)
OmegaConf.register_new_resolver("help_groups", groups_text, replace=True)


@hydra.main(config_path=config_search_path(), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """``python train.py`` / ``aft-train``: train ``cfg`` in the run folder Hydra chose."""
    with user_errors_exit():
        hydra_cfg = HydraConfig.get()
        train(cfg, Path(hydra_cfg.runtime.output_dir), list(hydra_cfg.overrides.task))


if __name__ == "__main__":  # python -m aft.commands.train
    main()
