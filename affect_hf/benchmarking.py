"""Benchmark a recipe's model: inference and the training loop's own step, throughput, memory, FLOPs, fraction of
peak; for EMMA also `affect-hf predict` end to end and the inference backends. `scripts/benchmark.py` runs `main`
(`python scripts/benchmark.py --help` lists the options).

Why each piece:
- The matmul peak is measured, not looked up: "fraction of peak" is only meaningful against what this machine (its
  threads, its BLAS, its bf16 support) actually sustains.
- FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode` on a real forward (and the real training step),
  so the count follows the model code; the CPU flash-attention ops, which that counter does not know, are added.
- Training is timed through the loop's `TrainingStep` under Accelerate (the recipe's optimiser groups, betas and
  clipping; bf16 through Accelerate's autocast): the same code path as `scripts/train.py`.
- Throughput is the median over timed iterations after warm-up (oneDNN and cuBLAS pick kernels on first use).
- Memory: on CUDA `torch.cuda.max_memory_allocated` (tensors only); on CPU the process's resident-set high-water
  mark, reset per phase where Linux allows it.
Nothing here asserts a timing: the figures are for the project's notes, not a test.
"""

import argparse
import copy
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import transformers
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from .models import DTYPES, dtype_name, resolve_dtype
from .training import (
    RECIPE_NAMES,
    TrainingArguments,
    TrainingStep,
    build_schedule,
    get_recipe,
    resolve_mixed_precision,
)


MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


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


def benchmark_recipe(recipe_name: str, preset: str, **recipe_options) -> Any:
    """The recipe as training builds it, at a model preset, without data (`data_dir` is not read)."""
    recipe_class = get_recipe(recipe_name)
    recipe_args = recipe_class.arguments_class(data_dir="<benchmark>", model_config=preset, **recipe_options)
    return recipe_class(TrainingArguments(recipe=recipe_name, output_dir="<benchmark>"), recipe_args)


class LoopTrainingStep:
    """The training loop's step (`TrainingStep`) for a recipe's model under Accelerate, at one precision.

    The model is copied, so the caller's stays unprepared; the optimiser, its groups and betas, the schedule and the
    gradient clipping are the recipe's.
    """

    def __init__(self, recipe: Any, model: torch.nn.Module, dtype: str, device: torch.device):
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


# Recipes whose model drops patches in training, so that a step's cost depends on the mask ratio.
MASKED_RECIPES = ("mae", "cotex")


def attention_implementation(model: torch.nn.Module) -> dict:
    """What the model's ViT reads at call time (EMMA's `vit`, MAE's `vit`, CoTEX's first view); none for a CNN."""
    vit = getattr(model, "vit", None) or (model.views[0] if hasattr(model, "views") else None)
    return {"vit": vit.config._attn_implementation if vit is not None else None}


def cnn_memory_format(model: torch.nn.Module, pixel_values: torch.Tensor) -> dict:
    """Whether EMMA's CNN's first convolution sees and produces channels_last tensors (the model converts no input)."""
    cnn = getattr(model, "cnn", None)
    if cnn is None:
        return {}
    first_conv = next(module for module in cnn.modules() if isinstance(module, torch.nn.Conv2d))
    seen = {}

    def hook(module, inputs, output):
        seen["input_channels_last"] = inputs[0].is_contiguous(memory_format=torch.channels_last)
        seen["output_channels_last"] = output.is_contiguous(memory_format=torch.channels_last)

    handle = first_conv.register_forward_hook(hook)
    with torch.inference_mode():
        model(pixel_values[:1])
    handle.remove()
    return seen


def make_batch(recipe, model, batch_size: int, device: torch.device) -> dict:
    batch = recipe.example_batch(model, batch_size, torch.Generator().manual_seed(0))
    return {key: value.to(device) for key, value in batch.items()}


def build_model(recipe, device: torch.device) -> torch.nn.Module:
    """The recipe's model as training builds it (EMMA's CNN in channels_last), on `device`, in eval mode."""
    return recipe.build_model().to(device).eval()


def benchmark_inference(
    model, pixel_values, dtype_name: str, device: torch.device, args
) -> tuple[list[float], PeakMemory]:
    """Eval-mode forward under inference_mode, the weights in `dtype_name` as `predict --dtype` runs them."""
    dtype = DTYPES[dtype_name]
    runner = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
    inputs = pixel_values.to(dtype)

    def step() -> None:
        with torch.inference_mode():
            runner(inputs)

    with PeakMemory(device) as memory:
        times = time_steps(step, device, args.warmup, args.steps, args.min_time, args.max_steps)
    return times, memory


def benchmark_training(
    recipe, model, batch, dtype_name: str, device: torch.device, args
) -> tuple[list[float], PeakMemory]:
    """The loop's training step (forward, backward, clipping, AdamW, schedule) under Accelerate."""
    with PeakMemory(device) as memory:
        step = LoopTrainingStep(recipe, model, dtype_name, device)
        times = time_steps(lambda: step(batch), device, args.warmup, args.steps, args.min_time, args.max_steps)
        step.close()
    return times, memory


def parse_size(text: str) -> tuple[int, int]:
    """ "640x360" -> (640, 360)."""
    width, _, height = text.partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 640x360, got {text!r}")
    return int(width), int(height)


def benchmark_end_to_end(model, device: torch.device, args, inference_flops: float, peak: dict) -> list[dict]:
    """`affect-hf predict`'s own code (decode + detect + align + model + pose + tracking, rows to Parquet), for each
    of `--video-sizes`: a generated video of two moving faces, and one 4x longer (does memory stay flat?); then
    decoding alone, detection + alignment alone and the model alone on the same frames and faces. Each row says
    how much of the model's rate survives end to end and what share of the end-to-end time its stage would take;
    the run itself reports the seconds it spent in each stage (`PredictionSummary.stage_seconds`)."""
    import tempfile

    from skimage.data import astronaut  # the real face photo the videos are made of (a dev dependency)

    from .data.synthetic_video import write_face_video
    from .faces import AutoDetector, align_faces
    from .inference import FaceAffectAnalyzer, predict
    from .models import dtype_name

    face = astronaut()[40:300, 110:350]
    detector = AutoDetector(device)  # predict's default: BlazeFace with O-Net's points on video frames
    analyzer = FaceAffectAnalyzer(model, detector, batch_size=2 * args.video_batch_size)
    precision = dtype_name(model.dtype)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for width, height in args.video_sizes:
            size = f"{width}x{height}"
            videos = {
                label: write_face_video(
                    folder / f"{size}-{frames}.mp4", face, num_frames=frames, fps=25, size=(width, height)
                )  # fmt: skip
                for label, frames in (("", args.video_frames), (", 4x longer", 4 * args.video_frames))
            }
            short = videos[""]
            # Warm-up (oneDNN and cuDNN pick their kernels on first use), untimed.
            predict([short], analyzer, folder / "warmup.parquet", batch_size=args.video_batch_size, progress=False,
                    overwrite=True)  # fmt: skip
            group = []
            for label, video in videos.items():
                with PeakMemory(device) as memory:
                    summary = predict([video], analyzer, folder / f"{size}{label}.parquet",
                                      batch_size=args.video_batch_size, progress=False)  # fmt: skip
                group.append({
                    "phase": f"end-to-end, {size}{label}", "size": size, "frames": summary.frames,
                    "faces": summary.faces, "frames_per_s": summary.frames_per_second,
                    "peak_memory_gib": memory.peak_bytes / 2**30, "memory_before_gib": memory.before_bytes / 2**30,
                    "stage_shares": summary.stage_shares(), "dtype": precision,
                })  # fmt: skip
                print(f"  done: {group[-1]['phase']}: {summary.frames_per_second:.2f} frames/s", file=sys.stderr)
            for causal in (False, True):  # the temporal model at the recipe's defaults over each face's frames
                temporal = default_temporal_model(model, causal)
                with PeakMemory(device) as memory:
                    summary = predict([short], analyzer, folder / f"{size}-temporal-{causal}.parquet",
                                      batch_size=args.video_batch_size, progress=False, temporal=temporal)  # fmt: skip
                group.append({
                    "phase": f"+ temporal ({'causal' if causal else 'bidirectional'}), {size}", "size": size,
                    "frames": summary.frames, "faces": summary.faces, "frames_per_s": summary.frames_per_second,
                    "peak_memory_gib": memory.peak_bytes / 2**30, "memory_before_gib": memory.before_bytes / 2**30,
                    "stage_shares": summary.stage_shares(), "dtype": precision,
                    "rate_of_plain_run": summary.frames_per_second / group[0]["frames_per_s"],
                })  # fmt: skip
                print(f"  done: {group[-1]['phase']}: {summary.frames_per_second:.2f} frames/s", file=sys.stderr)
            tick = time.perf_counter()
            images = decoded_frames(short)
            decode_seconds = time.perf_counter() - tick
            detect_seconds, detections = time_detection(analyzer, images, args.video_batch_size)
            crops = torch.cat([
                align_faces(image.to(device), faces.landmarks, model.config.image_size, faces.keypoint_names)
                for image, faces in zip(images, detections, strict=True)
            ])  # fmt: skip
            model_seconds = time_model(analyzer, crops, 2 * args.video_batch_size)
            for stage, seconds in (("decode", decode_seconds), ("detect + align", detect_seconds),
                                   ("model", model_seconds)):  # fmt: skip
                group.append({"phase": f"{stage} alone, {size}", "size": size, "frames": len(images),
                              "faces": len(crops), "frames_per_s": len(images) / seconds,
                              "share_of_end_to_end": group[0]["frames_per_s"] * seconds / len(images)})  # fmt: skip
            model_rate = group[-1]["frames_per_s"]
            for row in group:
                row["fraction_of_model_rate"] = row["frames_per_s"] / model_rate
                faces_per_s = row["frames_per_s"] * row["faces"] / max(row["frames"], 1)
                if not row["phase"].startswith(("decode", "detect")):
                    row["model_fraction_of_peak"] = faces_per_s * inference_flops / peak["flops_per_s"]
            rows += group
    return rows


def default_temporal_model(frame_model, causal: bool) -> torch.nn.Module:
    """A temporal model at `--recipe temporal`'s defaults (hidden 256, 2 layers, 4 s windows at 30 frames/s) for
    `frame_model`, untrained (its cost is its size, not its weights)."""
    from .modeling import TemporalAffectModel
    from .training.recipes.temporal import TemporalArguments, temporal_config

    defaults = TemporalArguments(data_dir="", frame_model="")
    config = temporal_config(
        frame_model.config, hidden_size=defaults.hidden_size, num_hidden_layers=defaults.num_hidden_layers,
        num_attention_heads=defaults.num_attention_heads, intermediate_size=2 * defaults.hidden_size,
        causal=causal, window_frames=defaults.window_frames, frames_per_second=defaults.fps,
    )  # fmt: skip
    return TemporalAffectModel(config).eval().to(frame_model.device)


def benchmark_temporal_track(model, args) -> dict:
    """The temporal recipe's cost for this EMMA, through the recipe itself: a synthetic VA track of
    `--temporal-track-frames` training frames (and a tenth as many validation frames) at 224 px, the frozen EMMA's
    features extracted once (`data.frame_features`: frames/s), then one epoch of the temporal model at its defaults
    through the loop, features read back from the cache (seconds, with its evaluation and checkpoint)."""
    import tempfile

    from .data import make_synthetic_abaw
    from .data.frame_features import extract_frame_features
    from .evaluation import load_split
    from .hub import save_model_folder
    from .models import load_affect_model, weights_sha256
    from .training import train
    from .training.recipes.temporal import FRAME_FEATURES_DIR, TemporalArguments

    frames = args.temporal_track_frames
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        tick = time.perf_counter()
        root = make_synthetic_abaw(folder / "tracks", num_train=frames, num_validation=max(frames // 10, 1),
                                   num_test=1, image_size=model.config.image_size, frames_per_video=500,
                                   layout="tracks")  # fmt: skip
        made = time.perf_counter() - tick
        frame_dir = save_model_folder(copy.deepcopy(model).float().cpu(), folder / "emma")
        output = folder / "temporal"
        frame_model = load_affect_model(frame_dir, device="cpu", dtype="fp32")
        extraction = {}
        for split in ("train", "validation"):  # into the run's own cache: the recipe reads it back
            rows = load_split(root, "va", split)
            tick = time.perf_counter()
            extract_frame_features(frame_model, rows, output / FRAME_FEATURES_DIR, weights_sha256(frame_dir),
                                   TemporalArguments(data_dir="", frame_model="").feature_batch_size)  # fmt: skip
            extraction[split] = (rows.num_rows, time.perf_counter() - tick)
            print(f"  done: features of {rows.num_rows} {split} frames", file=sys.stderr)
        del frame_model
        training = TrainingArguments(recipe="temporal", output_dir=str(output), num_train_epochs=1,
                                     mixed_precision="no", num_workers=0, report_to="none", seed=0)  # fmt: skip
        cached = {path: path.stat().st_mtime_ns for path in (output / FRAME_FEATURES_DIR).glob("*.arrow")}
        tick = time.perf_counter()
        state = train(training, TemporalArguments(data_dir=str(root), frame_model=str(frame_dir), task="va"))
        epoch = time.perf_counter() - tick
        # The recipe read the two extractions (train, validation) back, untouched, rather than making its own.
        after = {path: path.stat().st_mtime_ns for path in (output / FRAME_FEATURES_DIR).glob("*.arrow")}
        read_back = len(cached) == 2 and after == cached
    extracted = sum(count for count, _ in extraction.values())
    return {
        "train_frames": extraction["train"][0], "validation_frames": extraction["validation"][0],
        "image_size": model.config.image_size, "synthetic_track_seconds": made,
        "extraction_frames_per_s": extracted / sum(seconds for _, seconds in extraction.values()),
        "extraction_seconds": sum(seconds for _, seconds in extraction.values()),
        "epoch_seconds": epoch, "training_steps": state["global_step"], "P_VA": state["best_score"],
        "features_read_back": read_back,
    }  # fmt: skip


def benchmark_corpus(model, args) -> list[dict]:
    """`affect-hf predict` over a folder of generated videos (two faces each, lengths 2:1:1:...) on the CPU: one
    process with every core, then `accelerate launch` of `--corpus-processes` processes (gloo) sharing the cores.
    Frames/s are over the whole command (start-up and model loading included); the stage shares come from what each
    process recorded in the table folder (`PredictionSummary.stage_seconds`)."""
    import subprocess
    import tempfile

    from skimage.data import astronaut

    from .data.synthetic_video import write_face_video
    from .hub import save_model_folder
    from .inference.table import shard_records

    face = astronaut()[40:300, 110:350]
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        model_dir = save_model_folder(copy.deepcopy(model).float().cpu(), folder / "model")
        corpus = folder / "corpus"
        corpus.mkdir()
        for number in range(args.corpus_videos):
            frames = args.video_frames * (2 if number == 0 else 1)
            write_face_video(corpus / f"video_{number}.mp4", face, num_frames=frames, fps=25, size=(640, 360))
        for processes in dict.fromkeys((1, args.corpus_processes)):
            output = folder / f"table_{processes}.parquet"
            predict = ["-m", "affect_hf", "predict", str(corpus), "--model", str(model_dir), "--output", str(output),
                       "--device", "cpu", "--batch_size", str(args.video_batch_size)]  # fmt: skip
            launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                      "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
            threads = str(max(1, cores // processes))
            env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
            tick = time.perf_counter()
            done = subprocess.run([sys.executable, *(launch if processes > 1 else []), *predict], env=env,
                                  capture_output=True, text=True)  # fmt: skip
            wall = time.perf_counter() - tick
            if done.returncode:
                raise RuntimeError(f"the {processes}-process corpus run failed: {done.stderr.strip()[-2000:]}")
            stats = [record["stats"] for record in shard_records(output).values()]
            process_seconds = sum(shard["seconds"] for shard in stats)
            stages: dict[str, float] = {}
            for shard in stats:
                for stage, seconds in shard["stage_seconds"].items():
                    stages[stage] = stages.get(stage, 0.0) + seconds
            frames = sum(shard["frames"] for shard in stats)
            rows.append({
                "phase": f"corpus, {processes} process{'es' if processes > 1 else ''}", "processes": processes,
                "threads_per_process": int(threads), "videos": args.corpus_videos, "frames": frames,
                "faces": sum(shard["faces"] for shard in stats), "wall_seconds": wall, "frames_per_s": frames / wall,
                "files_per_process": [shard["videos"] + shard["images"] for shard in stats],
                "analysis_seconds_per_process": [shard["seconds"] for shard in stats],
                "stage_shares": {stage: seconds / process_seconds for stage, seconds in stages.items()},
            })  # fmt: skip
            print(f"  done: {rows[-1]['phase']}: {rows[-1]['frames_per_s']:.2f} frames/s", file=sys.stderr)
    for row in rows:
        row["speedup_over_one_process"] = row["frames_per_s"] / rows[0]["frames_per_s"]
    return rows


def decoded_frames(path: Path) -> list[torch.Tensor]:
    """Every frame of a video as `predict`'s reader gives it (`inference.media.iter_frames`), in memory."""
    import threading

    from .inference.media import MediaReport, iter_frames

    return [frame.image for frame in iter_frames([path], 1, MediaReport(), threading.Event())]


def time_model(analyzer, crops: torch.Tensor, batch_size: int) -> float:
    """Seconds for the model alone over aligned crops, in batches of `batch_size`, as `predict` runs it: the second
    of two passes (the first picks the kernels of every batch shape, the short last one included)."""
    pixel_values = analyzer.normalise(crops).to(analyzer.model.dtype)
    with torch.inference_mode():
        for _ in range(2):
            synchronize(analyzer.device)
            tick = time.perf_counter()
            for start in range(0, len(pixel_values), batch_size):
                analyzer.model(pixel_values=pixel_values[start : start + batch_size])
            synchronize(analyzer.device)
    return time.perf_counter() - tick


def time_detection(analyzer, images: list[torch.Tensor], batch_size: int) -> tuple[float, list]:
    """Seconds to detect and align the faces of video frames as `predict` does (its detector, batched), after a
    warm-up; and the detections."""
    from .faces import align_faces

    batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    analyzer.detector(batches[0], video=[True] * len(batches[0]))
    detections = []
    tick = time.perf_counter()
    for batch in batches:
        found = analyzer.detector(batch, video=[True] * len(batch))
        for image, faces in zip(batch, found, strict=True):
            align_faces(image.to(analyzer.device), faces.landmarks, analyzer.image_size, faces.keypoint_names)
        detections += found
    synchronize(analyzer.device)
    return time.perf_counter() - tick, detections


def benchmark_crowd(device: torch.device) -> dict:
    """Faces found on the tests' crowd picture (20 real faces, 32-300 px wide, on 2000 x 1400), per backend."""
    from .data.scenes import crowd
    from .faces import DETECTORS

    scene, pasted = crowd()
    results = {}
    for name in ("mtcnn", "blazeface"):
        detector = DETECTORS[name](device)
        detector([scene])
        tick = time.perf_counter()
        [found] = detector([scene])
        seconds = time.perf_counter() - tick
        centres = found.landmarks.mean(1) if len(found) else torch.zeros(0, 2)
        hits = [int(((centres - torch.tensor(face.centre)).norm(dim=1) < face.width / 2).sum()) for face in pasted]
        results[name] = {"faces": len(pasted), "found_once": sum(hit == 1 for hit in hits),
                         "found_twice_or_more": sum(hit > 1 for hit in hits), "detections": len(found),
                         "seconds": seconds}  # fmt: skip
        print(f"  done: crowd, {name}: {results[name]['found_once']} of {len(pasted)} faces", file=sys.stderr)
    return results


BACKENDS = ("torch", "compile", "onnx", "onnx-int8")


def int8_matmul_peak(sizes: tuple[int, ...], min_time_s: float) -> dict:
    """The int8 x int8 -> int32 matmul rate ONNX Runtime sustains here (MatMulInteger, the op dynamic int8 models
    run), in multiply-adds x 2 per second: the peak that int8 rows are a fraction of."""
    import tempfile

    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    best = {"flops_per_s": 0.0, "best_size": None, "source": "onnxruntime MatMulInteger (uint8 x int8)"}
    for size in sizes:
        graph = helper.make_graph(
            [helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "int8_matmul",
            [helper.make_tensor_value_info("a", TensorProto.UINT8, [size, size]),
             helper.make_tensor_value_info("b", TensorProto.INT8, [size, size])],
            [helper.make_tensor_value_info("c", TensorProto.INT32, [size, size])],
        )  # fmt: skip
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        with tempfile.NamedTemporaryFile(suffix=".onnx") as handle:
            onnx.save(model, handle.name)
            session = ort.InferenceSession(handle.name, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        inputs = {"a": rng.integers(0, 255, (size, size), dtype=np.uint8),
                  "b": rng.integers(-127, 127, (size, size), dtype=np.int8)}  # fmt: skip
        times = time_steps(partial(session.run, None, inputs), torch.device("cpu"), 1, None, min_time_s, 50)
        rate = 2 * size**3 / statistics.median(times)
        if rate > best["flops_per_s"]:
            best.update(flops_per_s=rate, best_size=size)
    return best


def benchmark_backends(model, recipe, device: torch.device, args, inference_flops: float, report: dict) -> list[dict]:
    """Inference of the same inputs through torch fp32, `torch.compile`, ONNX Runtime fp32 and int8 (dynamic),
    each as images/s and as a fraction of the measured peak of its precision. The ONNX files come from
    `affect-hf export onnx` itself (its parity check included)."""
    import tempfile

    from .export import export_onnx
    from .hub import save_model_folder
    from .models import OnnxAffectModel

    rows = []
    runners, records = {}, {}
    workspace = tempfile.TemporaryDirectory(prefix="affect-hf-bench-")
    folder = Path(workspace.name)
    if "torch" in args.backends:
        runners["torch"] = model
    if "compile" in args.backends:
        runners["compile"] = torch.compile(model)
    if {"onnx", "onnx-int8"} & set(args.backends):
        save_model_folder(model, folder / "model")
        records["export"] = export_onnx(folder / "model", folder / "onnx", quantize="dynamic")
        if "onnx" in args.backends:
            runners["onnx"] = OnnxAffectModel(folder / "onnx")
        if "onnx-int8" in args.backends:
            runners["onnx-int8"] = OnnxAffectModel(folder / "onnx", int8=True)
            report["peak"].setdefault("int8", int8_matmul_peak(args.int8_matmul_sizes, args.matmul_time))
    fp32_peak = report["peak"].get("fp32") or matmul_peak(DTYPES["fp32"], device, (1024, 2048), args.matmul_time)
    for batch_size in args.inference_batch_sizes:
        pixel_values = make_batch(recipe, model, batch_size, device)["pixel_values"]
        for name, runner in runners.items():

            def step(runner=runner, pixel_values=pixel_values) -> None:
                with torch.inference_mode():
                    runner(pixel_values=pixel_values)

            try:
                with PeakMemory(device) as memory:
                    times = time_steps(step, device, max(args.warmup, 1), args.steps, args.min_time, args.max_steps)
            except Exception as error:  # noqa: BLE001  (e.g. torch.compile without a C++ compiler: say so, go on)
                rows.append({"backend": name, "batch_size": batch_size, "error": f"{type(error).__name__}: {error}"})
                continue
            images_per_s = batch_size / statistics.median(times)
            peak = report["peak"]["int8"] if name == "onnx-int8" else fp32_peak
            rows.append({
                "backend": name, "batch_size": batch_size, "timed_steps": len(times), "images_per_s": images_per_s,
                "fraction_of_peak": images_per_s * inference_flops / peak["flops_per_s"],
                "peak_precision": "int8" if name == "onnx-int8" else "fp32",
                "peak_memory_gib": memory.peak_bytes / 2**30,
            })  # fmt: skip
            print(f"  done: backend {name} batch {batch_size}: {images_per_s:.2f} images/s", file=sys.stderr)
    for row in rows:
        reference = next((r for r in rows if r["backend"] == "torch" and r["batch_size"] == row["batch_size"]), None)
        if reference and "images_per_s" in row and "images_per_s" in reference:
            row["speedup_over_torch_fp32"] = row["images_per_s"] / reference["images_per_s"]
    if records:
        report["onnx_parity_max_abs_difference"] = records["export"]["parity_max_abs_difference"]
    runners.clear()
    workspace.cleanup()
    return rows


def benchmark_parity(model, recipe, device: torch.device, dtype_names: list[str]) -> dict[str, dict]:
    """The model's answers on `device` in each dtype against the CPU in fp32, on the same 16 images: the largest
    valence/arousal difference and the share of expression and AU decisions that agree (does the device path, and
    each precision, give the CPU's answers?). The model is the benchmark's, at its preset's initialisation, not
    trained: decisions near a boundary flip with rounding more often than a trained model's would."""
    from .modeling.pipeline_affect import affect_scores

    pixel_values = make_batch(recipe, model, 16, torch.device("cpu"))["pixel_values"]

    def answers(runner, on: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            outputs = runner(pixel_values=pixel_values.to(on, dtype))
        return {name: value.float().cpu() for name, value in affect_scores(outputs, model.config).items()}

    reference = answers(copy.deepcopy(model).float().cpu(), torch.device("cpu"), torch.float32)
    results = {}
    for name in dtype_names:
        runner = copy.deepcopy(model).to(device, DTYPES[name])
        got = answers(runner, device, DTYPES[name])
        del runner
        row = {
            "expression_agreement": float(
                (got["expression_probabilities"].argmax(-1) == reference["expression_probabilities"].argmax(-1))
                .float()
                .mean()
            )
        }
        if "valence_arousal" in got:
            row["valence_arousal_max_abs_difference"] = float(
                (got["valence_arousal"] - reference["valence_arousal"]).abs().max()
            )
        if "au_active" in got:
            row["au_agreement"] = float((got["au_active"] == reference["au_active"]).float().mean())
        results[name] = row
        print(f"  done: parity {name} on {device}: {row}", file=sys.stderr)
    return results


def training_flops(recipe, model, batch, device: torch.device) -> tuple[float, dict[str, int]]:
    """FLOPs per image of one training step (fp32; the frozen CNN runs forward only, as in the model)."""
    step = LoopTrainingStep(recipe, model, "fp32", device)
    flops = count_flops(lambda: step(batch), len(batch["pixel_values"]))
    step.close()
    return flops


def run(args: argparse.Namespace) -> dict:
    """Every measurement of one invocation, as a JSON-ready dict."""
    started = time.perf_counter()
    device = torch.device(args.device)
    dtype_names = args.dtypes
    training_dtypes = args.training_dtypes or dtype_names
    sizes = tuple(args.matmul_sizes or ((2048, 4096, 8192) if device.type == "cuda" else (1024, 2048, 3072)))

    report: dict = {
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cuda": torch.version.cuda if device.type == "cuda" else None,
            # What `auto` picks here: `predict --dtype auto` and `train --mixed_precision auto`.
            "dtype_auto": dtype_name(resolve_dtype("auto", device)),
            "mixed_precision_auto": resolve_mixed_precision("auto"),
            "num_threads": torch.get_num_threads(),
            "recipe": args.recipe,
            "preset": args.preset,
            # Other processes on the same cores slow every phase: the load average tells whether the run had them.
            "loadavg_start": os.getloadavg(),
        },
        "peak": {},
        "results": [],
        "notes": [],
    }
    for name in dict.fromkeys([*dtype_names, *training_dtypes]):
        report["peak"][name] = matmul_peak(DTYPES[name], device, sizes, args.matmul_time)

    recipe = benchmark_recipe(args.recipe, args.preset)
    model = build_model(recipe, device)
    report["parameters"] = sum(p.numel() for p in model.parameters())
    report["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    report["attention"] = attention_implementation(model)
    flop_batch = make_batch(recipe, model, 2, device)
    report["cnn_memory_format"] = cnn_memory_format(model, flop_batch["pixel_values"])

    def inference() -> None:
        with torch.inference_mode():
            model(flop_batch["pixel_values"])

    inference_flops, inference_ops = count_flops(inference, 2)
    report["flops_per_image"] = {"inference": inference_flops}
    report["flop_ops"] = {"inference": inference_ops}
    report["attention"]["sdpa_ops_seen"] = sorted(op for op in inference_ops if "scaled_dot_product" in op)

    for batch_size in args.inference_batch_sizes:
        pixel_values = make_batch(recipe, model, batch_size, device)["pixel_values"]
        for name in dtype_names:
            times, memory = benchmark_inference(model, pixel_values, name, device, args)
            report["results"].append(result_row("inference", name, batch_size, times, memory, inference_flops, report))

    report["parity"] = benchmark_parity(model, recipe, device, dtype_names) if args.parity else {}
    report["backends"] = []
    if args.backends:
        if args.recipe != "emma":
            raise SystemExit("--backends compares EMMA's inference: use --recipe emma")
        report["backends"] = benchmark_backends(model, recipe, device, args, inference_flops, report)

    report["end_to_end"], report["crowd"], report["corpus"] = [], {}, []
    if args.recipe == "emma" and args.video_frames:
        # The model as `predict --dtype` runs it (auto: bf16 where native, fp16 on older GPUs, else fp32).
        video_dtype = resolve_dtype(args.video_dtype, device)
        name = dtype_name(video_dtype)
        peak = report["peak"].get(name) or matmul_peak(video_dtype, device, sizes, args.matmul_time)
        video_model = model if video_dtype == torch.float32 else copy.deepcopy(model).to(video_dtype)
        report["end_to_end"] = benchmark_end_to_end(video_model, device, args, inference_flops, peak)
        del video_model
        report["crowd"] = benchmark_crowd(device)
        if args.corpus_processes:
            report["corpus"] = benchmark_corpus(model, args)
    report["temporal_track"] = {}
    if args.recipe == "emma" and args.temporal_track_frames:
        report["temporal_track"] = benchmark_temporal_track(model, args)

    mask_ratios = args.mask_ratios if args.recipe in MASKED_RECIPES and args.mask_ratios else [None]
    for mask_ratio in mask_ratios:
        train_recipe = (
            recipe if mask_ratio is None else benchmark_recipe(args.recipe, args.preset, mask_ratio=mask_ratio)
        )
        train_model = model if mask_ratio is None else build_model(train_recipe, device)
        phase = "training" if mask_ratio is None else f"training mask {mask_ratio:g}"
        flops, ops = training_flops(train_recipe, train_model, make_batch(train_recipe, train_model, 2, device), device)
        report["flops_per_image"][phase], report["flop_ops"][phase] = flops, ops
        batch = make_batch(train_recipe, train_model, args.train_batch_size, device)
        for name in training_dtypes:
            times, memory = benchmark_training(train_recipe, train_model, batch, name, device, args)
            report["results"].append(result_row(phase, name, args.train_batch_size, times, memory, flops, report))

    report["speedup_over_fp32"] = speedups(report["results"])
    report["speedup_over_first_mask_ratio"] = mask_speedups(report["results"])
    if report["attention"]["vit"] not in (None, "sdpa") or (
        report["attention"]["vit"] and not report["attention"]["sdpa_ops_seen"]
    ):
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


def result_row(phase: str, dtype: str, batch_size: int, times: list[float], memory, flops: float, report) -> dict:
    median = statistics.median(times)
    images_per_s = batch_size / median
    achieved = flops * images_per_s
    print(f"  done: {phase} {dtype} batch {batch_size}: {images_per_s:.2f} images/s", file=sys.stderr)
    return {
        "phase": phase,
        "dtype": dtype,
        "batch_size": batch_size,
        "timed_steps": len(times),
        "median_s": median,
        "best_s": min(times),
        "images_per_s": images_per_s,
        "achieved_tflops": achieved / 1e12,
        "fraction_of_peak": achieved / report["peak"][dtype]["flops_per_s"],
        "memory_before_gib": memory.before_bytes / 2**30,
        "peak_memory_gib": memory.peak_bytes / 2**30,
        "memory_source": memory.source,
    }


def speedups(results: list[dict]) -> dict[str, float]:
    """Images/s over fp32's for each other dtype, phase and batch size measured in both ("bf16 inference_batch1")."""
    rates = {(r["phase"], r["batch_size"], r["dtype"]): r["images_per_s"] for r in results}
    return {
        f"{dtype} {phase}_batch{batch_size}": rate / rates[(phase, batch_size, "fp32")]
        for (phase, batch_size, dtype), rate in rates.items()
        if dtype != "fp32" and (phase, batch_size, "fp32") in rates
    }


def mask_speedups(results: list[dict]) -> dict[str, float]:
    """Training images/s at each mask ratio over the first ratio's, per dtype (how much cheaper a masked step is)."""
    masked = [r for r in results if r["phase"].startswith("training mask ")]
    ratios = {}
    for row in masked:
        first = next(r for r in masked if r["dtype"] == row["dtype"])
        if row is not first:
            ratios[f"{row['phase']} / {first['phase']} ({row['dtype']})"] = row["images_per_s"] / first["images_per_s"]
    return ratios


def stage_text(shares: dict[str, float]) -> str:
    return ", ".join(f"{stage} {100 * share:.1f}%" for stage, share in shares.items())


def format_report(report: dict) -> str:
    """A plain-text table of the report."""
    env = report["environment"]
    lines = [
        f"{env['recipe']} benchmark: preset {env['preset']}, {env['device']} ({env['cpu_capability']}), "
        f"{env['num_threads']} threads, torch {env['torch']}, transformers {env['transformers']}",
        f"parameters: {report['parameters'] / 1e6:.1f} M ({report['trainable_parameters'] / 1e6:.1f} M trained); "
        f"attention: {report['attention']}",
        f"CNN first conv channels_last: {report['cnn_memory_format']}",
        "matmul peak: "
        + ", ".join(
            f"{name} {peak['flops_per_s'] / 1e12:.3f} T{'OP' if name == 'int8' else 'FLOP'}/s (n={peak['best_size']})"
            for name, peak in report["peak"].items()
        ),
        "FLOPs per image: "
        + ", ".join(f"{phase} {flops / 1e9:.2f} G" for phase, flops in report["flops_per_image"].items()),
        "",
        f"{'phase':<18} {'dtype':<5} {'batch':>5} {'steps':>5} {'s/step':>8} {'img/s':>8} "
        f"{'TFLOP/s':>8} {'% peak':>7} {'mem GiB':>8} {'(before)':>9}",
    ]
    for r in report["results"]:
        lines.append(
            f"{r['phase']:<18} {r['dtype']:<5} {r['batch_size']:>5} {r['timed_steps']:>5} {r['median_s']:>8.3f} "
            f"{r['images_per_s']:>8.2f} {r['achieved_tflops']:>8.3f} {100 * r['fraction_of_peak']:>6.1f}% "
            f"{r['peak_memory_gib']:>8.2f} {r['memory_before_gib']:>9.2f}"
        )
    for title, key in (
        ("speed-up over fp32", "speedup_over_fp32"),
        ("mask ratio speed-up", "speedup_over_first_mask_ratio"),
    ):
        if report[key]:
            lines += ["", f"{title}: " + ", ".join(f"{name} {value:.2f}x" for name, value in report[key].items())]
    if report["backends"]:
        lines += ["", f"{'backend':<10} {'batch':>5} {'img/s':>8} {'vs torch':>8} {'% peak':>7} (of)   {'mem GiB':>8}"]
        for r in report["backends"]:
            if "error" in r:
                lines.append(f"{r['backend']:<10} {r['batch_size']:>5} unavailable: {r['error'][:90]}")
                continue
            lines.append(
                f"{r['backend']:<10} {r['batch_size']:>5} {r['images_per_s']:>8.2f} "
                f"{r.get('speedup_over_torch_fp32', float('nan')):>7.2f}x {100 * r['fraction_of_peak']:>6.1f}% "
                f"({r['peak_precision']}) {r['peak_memory_gib']:>8.2f}"
            )
    if report["end_to_end"]:
        precision = report["end_to_end"][0]["dtype"]
        lines += ["", f"{'end to end (' + precision + ')':<34} {'frames':>6} {'faces':>6} {'frames/s':>9} "
                  f"{'of model':>9} {'% peak':>7} {'mem GiB':>8} {'share':>6}"]  # fmt: skip
        for r in report["end_to_end"]:
            peak_share = f"{100 * r['model_fraction_of_peak']:>6.1f}%" if "model_fraction_of_peak" in r else ""
            memory = f"{r['peak_memory_gib']:>8.2f}" if "peak_memory_gib" in r else ""
            share = f"{100 * r['share_of_end_to_end']:>5.1f}%" if "share_of_end_to_end" in r else ""
            lines.append(
                f"{r['phase']:<34} {r['frames']:>6} {r['faces']:>6} {r['frames_per_s']:>9.2f} "
                f"{100 * r['fraction_of_model_rate']:>8.1f}% {peak_share:>7} {memory:>8} {share:>6}"
            )
            if "stage_shares" in r:
                lines.append("    in the run: " + stage_text(r["stage_shares"]))
    for name, row in report["parity"].items():
        lines.append(f"parity with CPU fp32, {name} on {env['device']}: " + ", ".join(
            f"{key} {value:.3g}" for key, value in row.items()))  # fmt: skip
    for r in report["corpus"]:
        lines.append(
            f"{r['phase']} ({r['threads_per_process']} threads each, {r['videos']} videos): {r['frames']} frames in "
            f"{r['wall_seconds']:.1f} s, {r['frames_per_s']:.2f} frames/s ({r['speedup_over_one_process']:.2f}x one "
            f"process); files per process {r['files_per_process']}; " + stage_text(r["stage_shares"])
        )
    if report.get("temporal_track"):
        track = report["temporal_track"]
        lines.append(
            f"temporal recipe on a {track['train_frames']}-frame synthetic track ({track['validation_frames']} "
            f"validation frames, {track['image_size']} px): features {track['extraction_frames_per_s']:.2f} frames/s "
            f"({track['extraction_seconds']:.0f} s, once), then {track['epoch_seconds']:.1f} s per epoch "
            f"({track['training_steps']} steps, with its evaluation and checkpoint)"
        )
    for name, found in report["crowd"].items():
        lines.append(
            f"crowd picture, {name}: {found['found_once']} of {found['faces']} faces found once "
            f"({found['found_twice_or_more']} twice or more, {found['detections']} detections) in "
            f"{found['seconds']:.2f} s"
        )
    lines += [f"note: {note}" for note in report["notes"]]
    lines.append(
        f"memory: {report['results'][0]['memory_source']}; total run {report['total_seconds']:.0f} s; load average "
        f"(1/5/15 min) at start {env['loadavg_start']}, at end {env['loadavg_end']}"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # The models of pictures (the temporal recipe's cost is its feature extraction: EMMA's inference, timed here).
    pictures = [name for name in RECIPE_NAMES if name != "temporal"]
    parser.add_argument("--recipe", default="emma", choices=pictures, help="whose model and training step")
    parser.add_argument("--preset", default="base", help='model preset ("base" = paper size, "tiny") or a JSON file')
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--dtype", nargs="+", default=["both"], choices=[*DTYPES, "both"],
        help="inference (and training) precisions; both: fp32 and bf16",
    )  # fmt: skip
    parser.add_argument(
        "--training-dtypes",
        nargs="+",
        default=None,
        choices=list(DTYPES),
        help="training dtypes (default: --dtype)",
    )
    parser.add_argument(
        "--mask-ratios", type=float, nargs="+", default=None,
        help="mae / cotex: one training phase per mask ratio (default: the recipe's own)",
    )  # fmt: skip
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
    parser.add_argument(
        "--video-frames", type=int, default=48,
        help="emma: frames of the end-to-end video (and 4x as many for the long one); 0 skips it",
    )  # fmt: skip
    parser.add_argument("--video-batch-size", type=int, default=16, help="frames per batch end to end")
    parser.add_argument(
        "--video-sizes", type=parse_size, nargs="+", default=[(640, 360), (1920, 1080)], metavar="WxH",
        help="emma: frame sizes of the end-to-end videos",
    )  # fmt: skip
    parser.add_argument(
        "--video-dtype",
        default="auto",
        choices=["auto", *DTYPES],
        help="emma: the model's dtype end to end",
    )
    parser.add_argument(
        "--corpus-processes", type=int, default=2,
        help="emma: the corpus row, this many CPU processes of one launch against one process (0 skips it)",
    )  # fmt: skip
    parser.add_argument("--corpus-videos", type=int, default=4, help="videos in the corpus row")
    parser.add_argument(
        "--temporal-track-frames", type=int, default=0,
        help="emma: the temporal recipe's feature extraction and epoch over a synthetic track of N frames (0 skips)",
    )  # fmt: skip
    parser.add_argument(
        "--parity", action="store_true", help="the model's answers on --device in each --dtype against CPU fp32"
    )
    parser.add_argument(
        "--backends", nargs="*", choices=BACKENDS, default=None,
        help="emma: also time inference through these backends (no value: all of them)",
    )  # fmt: skip
    parser.add_argument("--int8-matmul-sizes", type=int, nargs="+", default=(1024, 2048))
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    args.dtypes = list(dict.fromkeys(name for names in args.dtype for name in (("fp32", "bf16") if names == "both"
                                                                               else (names,))))  # fmt: skip
    if args.backends == []:
        args.backends = list(BACKENDS)
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
