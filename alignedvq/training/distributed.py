"""Data parallelism for codec training: one process per device, started by ``torchrun``.

``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous variables; a plain
``alignedvq train-codec`` has none and runs as a world of one, with no process group at all.
CUDA devices use NCCL (each process on ``cuda:LOCAL_RANK``), CPUs use gloo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.parallel:
            dist.barrier()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over all processes (in place; returned for chaining)."""
        if self.parallel:
            self._in_place(tensor, lambda t: dist.all_reduce(t, op=dist.ReduceOp.SUM))
        return tensor

    def mean(self, value: float) -> float:
        """A scalar averaged over all processes (every process gets the same number)."""
        if not self.parallel:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.item() / self.size

    def broadcast_from_main(self, tensor: torch.Tensor) -> None:
        if self.parallel:
            self._in_place(tensor, lambda t: dist.broadcast(t, src=0))

    def _in_place(self, tensor: torch.Tensor, collective) -> None:
        moved = tensor.to(self._comm_device)
        collective(moved)
        if moved is not tensor:
            tensor.copy_(moved)

    @property
    def _comm_device(self) -> torch.device:
        # NCCL moves only CUDA tensors; gloo only CPU ones.
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def close(self) -> None:
        if self.parallel and dist.is_initialized():
            dist.destroy_process_group()


def join(device: str) -> World:
    """This process's place in the job. ``device``: ``cpu``, ``cuda`` or ``cuda:N``; under
    torchrun, ``cuda`` means this process's own GPU (``cuda:LOCAL_RANK``)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    requested = torch.device(device)
    if requested.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA device is available here")
        index = local_rank if size > 1 or requested.index is None else requested.index
        requested = torch.device("cuda", index)
        torch.cuda.set_device(requested)
    if size > 1:
        dist.init_process_group("nccl" if requested.type == "cuda" else "gloo",
                                rank=rank, world_size=size)
    return World(rank, size, requested)
