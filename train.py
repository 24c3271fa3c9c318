"""Train a model of the paper (or any composition of configs/): a Hydra app.

    python train.py                                   # the embedded default, CPU-friendly
    python train.py experiment=enwik8_aft_local32_l24_d256 data.root=/data/enwik8
    torchrun --nproc_per_node=8 train.py experiment=cifar10_aft_local256_l24_d256
    python train.py -m hydra/launcher=slurm_v100 experiment=... model.mixer.window=16,32,64

The run folder is runs/<overrides> (runs/default without overrides): the same command
writes to, and resumes from, the same folder.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from aft.training.trainer import train

OmegaConf.register_new_resolver("run_name", lambda overrides: overrides or "default", replace=True)


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    train(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
