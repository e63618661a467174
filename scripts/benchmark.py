"""Benchmark EMMA (MAE ViT + frozen DAN CNN): throughput, memory, FLOPs and the fraction of this machine's peak.

`python scripts/benchmark.py [--preset base] [--device cpu|cuda] [--dtype bf16|fp32|both] [--steps N] [--json out.json]`

Why each piece:
- The matmul peak is measured, not looked up: "fraction of peak" is only meaningful against what this machine (its
  threads, its BLAS, its bf16 support) actually sustains.
- FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode` on a real forward (and backward) pass, so the
  count follows the model code; the CPU flash-attention ops, which that counter does not know, are added here.
- Throughput is the median over timed iterations after warm-up (oneDNN and cuBLAS pick kernels on first use).
- Memory: on CUDA `torch.cuda.max_memory_allocated` (tensors only). On CPU the process resident-set high-water mark
  (VmHWM) reset before each phase through /proc/self/clear_refs where Linux allows it, else the never-reset
  `ru_maxrss`; it includes the Python interpreter, torch's libraries, the weights and whatever the allocators cache.
Nothing here asserts a timing: the figures are for the project's notes, not a test.
"""

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from affect_hf.training.presets import emma_config_from_preset
from modeling import EmmaForAffectAnalysis


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
NUM_ACTION_UNITS_DEFAULT = 12


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


def build_model(preset: str, device: torch.device) -> EmmaForAffectAnalysis:
    """EMMA with sdpa attention asked for explicitly, the frozen CNN's weights in channels_last, eval mode."""
    config = emma_config_from_preset(preset)
    model = EmmaForAffectAnalysis._from_config(config, attn_implementation="sdpa")
    model.to(device)
    if model.cnn is not None:
        model.cnn.to(memory_format=torch.channels_last)
    return model.eval()


def attention_implementation(model: EmmaForAffectAnalysis) -> dict:
    """What the ViT layers read at call time (`model.vit.config`), and what the top-level configs say."""
    return {
        "vit": model.vit.config._attn_implementation,
        "emma_config": model.config._attn_implementation,
        "emma_config.vit_config": model.config.vit_config._attn_implementation,
    }


def make_batch(model: EmmaForAffectAnalysis, batch_size: int, device: torch.device, labels: bool) -> dict:
    """Random images of the model's size and, for training, random labels for all three tasks."""
    vit_config = model.vit.config
    size = vit_config.image_size if isinstance(vit_config.image_size, int) else vit_config.image_size[0]
    generator = torch.Generator().manual_seed(0)
    batch = {"pixel_values": torch.randn(batch_size, vit_config.num_channels, size, size, generator=generator)}
    if labels:
        num_aus = getattr(model.config, "num_action_units", NUM_ACTION_UNITS_DEFAULT)
        batch["valence_arousal"] = torch.rand(batch_size, 2, generator=generator) * 2 - 1
        batch["expression"] = torch.randint(0, model.config.num_labels, (batch_size,), generator=generator)
        batch["action_units"] = torch.randint(0, 2, (batch_size, num_aus), generator=generator)
    return {key: value.to(device) for key, value in batch.items()}


def cnn_memory_format(model: EmmaForAffectAnalysis, batch: dict) -> dict:
    """Whether the CNN's first convolution sees and produces channels_last tensors (the model converts no input)."""
    if model.cnn is None:
        return {}
    first_conv = next(module for module in model.cnn.modules() if isinstance(module, torch.nn.Conv2d))
    seen = {}

    def hook(module, inputs, output):
        seen["input_channels_last"] = inputs[0].is_contiguous(memory_format=torch.channels_last)
        seen["output_channels_last"] = output.is_contiguous(memory_format=torch.channels_last)

    handle = first_conv.register_forward_hook(hook)
    with torch.inference_mode():
        model(batch["pixel_values"][:1])
    handle.remove()
    return seen


def count_flops(model: EmmaForAffectAnalysis, batch: dict, train: bool) -> tuple[float, dict[str, int]]:
    """FLOPs per image of one forward (inference) or forward + backward of the loss (training), and per op.

    The AdamW update is elementwise and not counted; the frozen CNN runs forward only, as in the model.
    """
    batch_size = batch["pixel_values"].shape[0]
    counter = FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOP_FORMULAS)
    model.train(train)
    with counter:
        if train:
            model(**batch).loss.backward()
        else:
            with torch.inference_mode():
                model(batch["pixel_values"])
    model.zero_grad(set_to_none=True)
    model.eval()
    per_op = {str(op): int(flops) for op, flops in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops() / batch_size, per_op


class PeakMemory:
    """Peak memory of one phase: CUDA allocated bytes, or the CPU process's resident-set high-water mark."""

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


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16 autocast (matmuls and convolutions in bf16, reductions in fp32); fp32 runs without autocast."""
    return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()


def benchmark_inference(
    model: EmmaForAffectAnalysis, batch: dict, dtype: torch.dtype, device: torch.device, args: argparse.Namespace
) -> tuple[list[float], PeakMemory]:
    """Eval-mode forward under inference_mode; the CNN runs too, as in every EMMA forward."""
    pixel_values = batch["pixel_values"]

    def step() -> None:
        with torch.inference_mode(), autocast(device, dtype):
            model(pixel_values)

    model.eval()
    with PeakMemory(device) as memory:
        times = time_steps(step, device, args.warmup, args.steps, args.min_time, args.max_steps)
    return times, memory


def benchmark_training(
    model: EmmaForAffectAnalysis, batch: dict, dtype: torch.dtype, device: torch.device, args: argparse.Namespace
) -> tuple[list[float], PeakMemory]:
    """One optimisation step: forward with all three labels, backward, AdamW step (a fresh optimiser per phase).

    The model is in train mode (dropout, stochastic depth), as in real training; the CNN stays in eval mode.
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-5)

    def step() -> None:
        with autocast(device, dtype):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    with PeakMemory(device) as memory:
        times = time_steps(step, device, args.warmup, args.steps, args.min_time, args.max_steps)
    model.eval()
    return times, memory


def run(args: argparse.Namespace) -> dict:
    """Every measurement of one invocation, as a JSON-ready dict."""
    started = time.perf_counter()
    device = torch.device(args.device)
    dtype_names = ["fp32", "bf16"] if args.dtype == "both" else [args.dtype]
    sizes = tuple(args.matmul_sizes or ((2048, 4096, 8192) if device.type == "cuda" else (1024, 2048, 3072)))

    report: dict = {
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "num_threads": torch.get_num_threads(),
            "preset": args.preset,
            # Other processes on the same cores slow every phase: the load average tells whether the run had them.
            "loadavg_start": os.getloadavg(),
        },
        "peak": {},
        "results": [],
        "notes": [],
    }
    for name in dtype_names:
        report["peak"][name] = matmul_peak(DTYPES[name], device, sizes, args.matmul_time)

    model = build_model(args.preset, device)
    report["parameters"] = sum(p.numel() for p in model.parameters())
    report["attention"] = attention_implementation(model)
    flop_batch = make_batch(model, 2, device, labels=True)
    report["cnn_memory_format"] = cnn_memory_format(model, flop_batch)
    inference_flops, inference_ops = count_flops(model, flop_batch, train=False)
    training_flops, training_ops = count_flops(model, flop_batch, train=True)
    report["flops_per_image"] = {"inference": inference_flops, "training": training_flops}
    report["flop_ops"] = {"inference": inference_ops, "training": training_ops}
    report["attention"]["sdpa_ops_seen"] = sorted(op for op in inference_ops if "scaled_dot_product" in op)

    phases = [("inference", batch_size) for batch_size in args.inference_batch_sizes]
    phases.append(("training", args.train_batch_size))
    for phase, batch_size in phases:
        batch = make_batch(model, batch_size, device, labels=phase == "training")
        for name in dtype_names:
            bench = benchmark_training if phase == "training" else benchmark_inference
            times, memory = bench(model, batch, DTYPES[name], device, args)
            median = statistics.median(times)
            images_per_s = batch_size / median
            achieved = report["flops_per_image"][phase] * images_per_s
            report["results"].append(
                {
                    "phase": phase,
                    "dtype": name,
                    "batch_size": batch_size,
                    "timed_steps": len(times),
                    "median_s": median,
                    "best_s": min(times),
                    "images_per_s": images_per_s,
                    "achieved_tflops": achieved / 1e12,
                    "fraction_of_peak": achieved / report["peak"][name]["flops_per_s"],
                    "memory_before_gib": memory.before_bytes / 2**30,
                    "peak_memory_gib": memory.peak_bytes / 2**30,
                    "memory_source": memory.source,
                }
            )
            print(f"  done: {phase} {name} batch {batch_size}: {images_per_s:.2f} images/s", file=sys.stderr)
        del batch

    report["speedup_bf16_over_fp32"] = speedups(report["results"])
    if report["attention"]["vit"] != "sdpa" or not report["attention"]["sdpa_ops_seen"]:
        report["notes"].append("the ViT does not run sdpa attention")
    if report["cnn_memory_format"] and not report["cnn_memory_format"].get("input_channels_last"):
        report["notes"].append(
            "the model does not convert pixel_values to channels_last; the CNN's channels_last weights make its "
            f"first convolution output channels_last: {report['cnn_memory_format'].get('output_channels_last')}"
        )
    if device.type == "cpu":
        report["notes"].append(
            "CPU memory is the process resident set: interpreter, libraries, weights, activations, optimiser state "
            "and allocator caches; 'before' is the resident set at the start of the phase"
        )
    report["environment"]["loadavg_end"] = os.getloadavg()
    report["total_seconds"] = time.perf_counter() - started
    return report


def speedups(results: list[dict]) -> dict[str, float]:
    """bf16 / fp32 images-per-second ratio for each phase and batch size measured in both dtypes."""
    rates = {(r["phase"], r["batch_size"], r["dtype"]): r["images_per_s"] for r in results}
    return {
        f"{phase}_batch{batch_size}": rates[(phase, batch_size, "bf16")] / rates[(phase, batch_size, "fp32")]
        for phase, batch_size, dtype in rates
        if dtype == "fp32" and (phase, batch_size, "bf16") in rates
    }


def format_report(report: dict) -> str:
    """A plain-text table of the report."""
    env = report["environment"]
    lines = [
        f"EMMA benchmark: preset {env['preset']}, {env['device']} ({env['cpu_capability']}), "
        f"{env['num_threads']} threads, torch {env['torch']}, transformers {env['transformers']}",
        f"parameters: {report['parameters'] / 1e6:.1f} M; attention: {report['attention']}",
        f"CNN first conv channels_last: {report['cnn_memory_format']}",
        "matmul peak: "
        + ", ".join(
            f"{name} {peak['flops_per_s'] / 1e12:.3f} TFLOP/s (n={peak['best_size']})"
            for name, peak in report["peak"].items()
        ),
        f"FLOPs per image: inference {report['flops_per_image']['inference'] / 1e9:.2f} G, "
        f"training (fwd+bwd) {report['flops_per_image']['training'] / 1e9:.2f} G",
        "",
        f"{'phase':<10} {'dtype':<5} {'batch':>5} {'steps':>5} {'s/step':>8} {'img/s':>8} "
        f"{'TFLOP/s':>8} {'% peak':>7} {'mem GiB':>8} {'(before)':>9}",
    ]
    for r in report["results"]:
        lines.append(
            f"{r['phase']:<10} {r['dtype']:<5} {r['batch_size']:>5} {r['timed_steps']:>5} {r['median_s']:>8.3f} "
            f"{r['images_per_s']:>8.2f} {r['achieved_tflops']:>8.3f} {100 * r['fraction_of_peak']:>6.1f}% "
            f"{r['peak_memory_gib']:>8.2f} {r['memory_before_gib']:>9.2f}"
        )
    if report["speedup_bf16_over_fp32"]:
        lines.append("")
        lines.append(
            "bf16 / fp32 speed-up: "
            + ", ".join(f"{key} {value:.2f}x" for key, value in report["speedup_bf16_over_fp32"].items())
        )
    lines += [f"note: {note}" for note in report["notes"]]
    lines.append(
        f"memory: {report['results'][0]['memory_source']}; total run {report['total_seconds']:.0f} s; load average "
        f"(1/5/15 min) at start {env['loadavg_start']}, at end {env['loadavg_end']}"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="base", help='EMMA preset ("base" = paper size, "tiny") or a JSON file')
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="both", choices=["fp32", "bf16", "both"])
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per phase (default: until --min-time, at most --max-steps)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per phase")
    parser.add_argument("--min-time", type=float, default=None, help="seconds of timed steps per phase (adaptive)")
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--inference-batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--train-batch-size", type=int, default=16)
    parser.add_argument("--matmul-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--matmul-time", type=float, default=1.0, help="seconds per matmul size")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    if args.min_time is None:
        # On 2 CPU cores one ViT-B training step takes tens of seconds: one timed step past warm-up is all that fits
        # in a few minutes. On a GPU, steps are milliseconds and many are cheap.
        args.min_time = 3.0 if args.device == "cuda" else 5.0
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    report = run(args)
    print(format_report(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
