"""Process-group set-up for torchrun and SLURM (hydra-submitit-launcher) launches.

torchrun exports ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``. Under
SLURM with submitit (one task per GPU) those are exported here from the job environment with
``submitit.helpers.TorchDistributedEnvironment``. A single process needs none of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, on ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes logs, checkpoints and wandb."""
        return self.rank == 0


def _export_submitit_environment() -> None:
    """Inside a submitit job without torchrun variables, export them from SLURM's."""
    if "RANK" in os.environ or "SUBMITIT_EXECUTOR" not in os.environ:
        return
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def init_distributed(device: str = "auto") -> DistInfo:
    """Initialise the default process group if launched with several processes.

    Args:
        device: ``"auto"`` (CUDA when available), ``"cuda"`` or ``"cpu"``. The backend is
            nccl on CUDA and gloo on the CPU.
    """
    _export_submitit_environment()
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("trainer.device=cuda but no CUDA device is visible: set trainer.device=cpu or auto")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
        _check_cuda_arch(dev)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
    return DistInfo(rank, world_size, local_rank, dev)


def _check_cuda_arch(device: torch.device) -> None:
    """Fail early when this PyTorch build has no kernels for the GPU (e.g. V100 = sm_70).

    Recent PyPI wheels start at sm_75; V100 users need a build that still lists sm_70
    (docs/training.md, "V100").
    """
    major, minor = torch.cuda.get_device_capability(device)
    built = [a for a in torch.cuda.get_arch_list() if a.startswith("sm_")]
    oldest = min((int(a[3:]) for a in built), default=0)
    if oldest > major * 10 + minor:
        raise RuntimeError(
            f"this PyTorch build ({torch.__version__}) has no kernels for {torch.cuda.get_device_name(device)} "
            f"(sm_{major}{minor}; it starts at sm_{oldest}): install a build that lists sm_{major}{minor} "
            "in torch.cuda.get_arch_list() (docs/training.md, section V100)"
        )


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over ranks (a no-op for one process)."""
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` for one process)."""
    if not dist.is_initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
