"""The loop's training step, on its own so that the benchmark times exactly what training runs."""

import contextlib

import torch
from accelerate import Accelerator


class TrainingStep:
    """Accumulate micro-batches (gradients all-reduced only on a window's last one), then clip and step.

    The loop calls `backward` for each micro-batch and `update` once per window, with its checks in between;
    `scripts/benchmark.py` calls the two in a row.
    """

    def __init__(self, accelerator: Accelerator, model, optimizer, scheduler, max_grad_norm: float):
        self.accelerator, self.model = accelerator, model
        self.optimizer, self.scheduler, self.max_grad_norm = optimizer, scheduler, max_grad_norm

    def backward(self, batch: dict, window_size: int, last_in_window: bool, weight: float = 1.0):
        """Forward and backward of one micro-batch; its loss counts `weight` / `window_size` of the window's gradient
        (weight 0: a backward that only syncs the window's gradients across processes)."""
        sync = contextlib.nullcontext() if last_in_window else self.accelerator.no_sync(self.model)
        with sync:
            outputs = self.model(**batch)
            self.accelerator.backward(outputs.loss * (weight / window_size))
        return outputs

    def update(self, step_optimizer: bool = True) -> None:
        """Clip (when asked), step the optimiser and the schedule, clear the gradients. Without `step_optimizer` (a
        window that trained nothing) only the schedule moves on."""
        if step_optimizer:
            if self.max_grad_norm > 0:
                self.accelerator.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def run(self, batch: dict) -> torch.Tensor:
        """One whole optimiser step on one batch (no accumulation); returns the loss."""
        outputs = self.backward(batch, window_size=1, last_in_window=True)
        self.update()
        return outputs.loss
