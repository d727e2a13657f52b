"""Data-parallel training over processes with Hugging Face Accelerate (``accelerate launch`` or ``torchrun``).

Every process holds the whole model, draws its own batches (its batch sampler is seeded by its rank) and
computes the gradients of the trainable parameters; the gradients are averaged over the processes before
each optimizer step, so the replicas stay identical and the effective batch is processes x batch_size.
Only adapters and small heads train, so one all-reduce of their flattened gradients per step is cheap,
and the model's own methods (``decision_log_probs``, ``trajectories``) stay the training entry points,
where DistributedDataParallel would require everything to go through one ``forward``. Only the main
process records data and writes checkpoints. With one process (a plain ``vla-driver train-sft``) this is
the same loop with nothing averaged, on the GPU when there is one.
"""
from __future__ import annotations

import torch
from accelerate import Accelerator


class DataParallel:
    """The process group of one training run; ``DataParallel()`` alone is a single CPU process."""

    def __init__(self, accelerator=None):
        self.accelerator = accelerator

    @classmethod
    def from_environment(cls, cpu: bool = False) -> DataParallel:
        """Join the process group that ``accelerate launch`` / ``torchrun`` set up (or run alone)."""
        return cls(Accelerator(cpu=cpu))

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes if self.accelerator else 1

    @property
    def rank(self) -> int:
        return self.accelerator.process_index if self.accelerator else 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return self.accelerator.device if self.accelerator else torch.device("cpu")

    def batch_seed(self, seed: int) -> int | list[int]:
        """Each rank's own stream of batches (rank 0 keeps the single-process stream)."""
        return seed if self.rank == 0 else [seed, self.rank]

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Mean of every process's gradients, written back in place (one all-reduce per call)."""
        if self.num_processes == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = self.accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
        offset = 0
        for p, g in zip(params, grads, strict=True):
            p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
            offset += g.numel()

    def wait(self) -> None:
        """Barrier: every process gets here before any goes on."""
        if self.num_processes > 1:
            self.accelerator.wait_for_everyone()
