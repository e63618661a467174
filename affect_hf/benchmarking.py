"""Measuring speed and memory honestly: this machine's matmul peak, FLOPs counted on real passes, per-phase peak
memory, and each recipe's training step timed through the training loop's own code (`TrainingStep`).

Used by `scripts/benchmark.py`; nothing here asserts a timing.
"""

import copy
import gc
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from .training.arguments import TrainingArguments
from .training.optimization import build_schedule
from .training.recipes import Recipe, get_recipe
from .training.step import TrainingStep


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MIXED_PRECISION = {"fp32": "no", "bf16": "bf16"}


# FlopCounterMode (torch 2.13) counts the CUDA sdpa kernels but not the CPU flash-attention ones; without these the
# attention matmuls (~8 % of ViT-B/16 at 224 px) would silently be left out of the CPU count. The formulas take
# shapes: FlopCounterMode turns tensor arguments into shapes for a custom mapping.
def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(
    grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


_aten = torch.ops.aten
CPU_SDPA_FLOP_FORMULAS = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that wall-clock time covers the work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(dtype: torch.dtype, device: torch.device, sizes: tuple[int, ...], min_time_s: float) -> dict:
    """Best sustained FLOP/s of square matmuls: per size, repeated calls for at least `min_time_s` after warm-up.

    The best size's rate is the peak: small matrices under-use the cores, large ones are what the model's big
    matmuls look like.
    """
    per_size = {}
    for size in sizes:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        for _ in range(2):
            a @ b
        synchronize(device)
        times = []
        start = time.perf_counter()
        while time.perf_counter() - start < min_time_s or len(times) < 3:
            tick = time.perf_counter()
            a @ b
            synchronize(device)
            times.append(time.perf_counter() - tick)
        per_size[size] = 2 * size**3 / min(times)
        del a, b
    best = max(per_size, key=per_size.get)
    per_size_tflops = {size: flops / 1e12 for size, flops in per_size.items()}
    return {"flops_per_s": per_size[best], "best_size": best, "per_size_tflops": per_size_tflops}


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else whatever `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


class PeakMemory:
    """Peak memory of one phase: CUDA allocated bytes, or the CPU process's resident-set high-water mark.

    On CPU the high-water mark (VmHWM) is reset before the phase through /proc/self/clear_refs where Linux allows it,
    else the never-reset `ru_maxrss` is read; it includes the interpreter, libraries, weights and allocator caches.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.source = ""
        self.before_bytes = 0
        self.peak_bytes = 0

    @staticmethod
    def _status_bytes(field: str) -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before_bytes = torch.cuda.memory_allocated(self.device)
            self.source = "torch.cuda.max_memory_allocated"
            return self
        self.before_bytes = self._status_bytes("VmRSS") or 0
        try:
            Path("/proc/self/clear_refs").write_text("5")  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
            self.source = "VmHWM (reset per phase)"
        except OSError:
            self.source = "ru_maxrss (process lifetime)"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        elif self.source.startswith("VmHWM") and self._status_bytes("VmHWM") is not None:
            self.peak_bytes = self._status_bytes("VmHWM")
        else:
            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def time_steps(
    step: Callable[[], None], device: torch.device, warmup: int, steps: int | None, min_time_s: float, max_steps: int
) -> list[float]:
    """Seconds per call after `warmup` calls: exactly `steps` calls, or (None) until `min_time_s`, 1 to `max_steps`."""
    for _ in range(warmup):
        step()
    synchronize(device)
    times: list[float] = []
    while True:
        tick = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - tick)
        if steps is not None:
            if len(times) >= steps:
                return times
        elif sum(times) >= min_time_s or len(times) >= max_steps:
            return times


def count_flops(run: Callable[[], None], batch_size: int) -> tuple[float, dict[str, int]]:
    """FLOPs per image of `run()` (2 per multiply-add, CPU flash attention included), and per op."""
    counter = FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOP_FORMULAS)
    with counter:
        run()
    per_op = {str(op): int(flops) for op, flops in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops() / batch_size, per_op


def benchmark_recipe(recipe_name: str, preset: str, **recipe_options) -> Recipe:
    """The recipe as training builds it, at a model preset, without data (`data_dir` is not read)."""
    recipe_class = get_recipe(recipe_name)
    recipe_args = recipe_class.arguments_class(data_dir="<benchmark>", model_config=preset, **recipe_options)
    return recipe_class(TrainingArguments(recipe=recipe_name, output_dir="<benchmark>"), recipe_args)


class LoopTrainingStep:
    """The training loop's step (`TrainingStep`) for a recipe's model under Accelerate, at one precision.

    The model is copied, so the caller's stays unprepared; the optimiser, its groups and betas, the schedule and the
    gradient clipping are the recipe's.
    """

    def __init__(self, recipe: Recipe, model: torch.nn.Module, dtype: str, device: torch.device):
        AcceleratorState._reset_state(reset_partial_state=True)
        self.accelerator = Accelerator(
            mixed_precision=MIXED_PRECISION[dtype], cpu=device.type == "cpu", step_scheduler_with_optimizer=False
        )
        model = copy.deepcopy(model).train()
        optimizer = recipe.optimizer(model, learning_rate=1e-5)
        scheduler = build_schedule(optimizer, "constant", warmup_steps=0, total_steps=1, steps_per_epoch=1)
        model, optimizer, scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.model = model
        self.step = TrainingStep(self.accelerator, model, optimizer, scheduler, recipe.args.max_grad_norm)

    def __call__(self, batch: dict) -> None:
        self.step.run(batch)

    def close(self) -> None:
        del self.model, self.step
        AcceleratorState._reset_state(reset_partial_state=True)
        gc.collect()
