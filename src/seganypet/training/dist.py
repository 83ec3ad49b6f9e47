"""torchrun / DDP helpers.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; when
they are present :func:`init` joins the process group (NCCL on GPU, gloo on CPU). Without them the run
is a single process and nothing is initialised.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger("seganypet.training.dist")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes checkpoints and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init(device: str) -> DistInfo:
    """Join the torchrun process group if launched by torchrun (or already initialised).

    Args:
        device: ``"cpu"`` or ``"cuda"``; selects the backend (gloo / nccl) and, for CUDA, the local GPU.
    """
    if dist.is_available() and dist.is_initialized():
        info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    elif "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
        info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
        logger.info("joined process group: rank %d of %d (%s)", info.rank, info.world_size, backend)
    else:
        info = DistInfo()
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
    return info


def shard(items: list[str], info: DistInfo) -> list[str]:
    """This rank's share of a sorted list: ``items[rank::world_size]`` (all items if that is empty)."""
    part = sorted(items)[info.rank :: info.world_size]
    if not part:
        logger.warning("rank %d has no case of its own; it samples from all %d cases", info.rank, len(items))
        return sorted(items)
    return part


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def any_flag(flag: bool, info: DistInfo) -> bool:
    """True on every rank if ``flag`` is True on any rank (so that all ranks stop together)."""
    if not info.distributed:
        return flag
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
