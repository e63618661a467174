"""The device check: what this package does on one GPU, in under 5 minutes. CI does not run it on a GPU; the tests
run it on the CPU at the tiny preset (`--device cpu`).

    python scripts/device_check.py [--device cuda] [--json device_check.json]

It reports, through `affect_hf.benchmarking` (the same code as `scripts/benchmark.py`):
- EMMA at paper size: inference images/s at batch 1, 16 and 64 in fp32, bf16 and fp16 (the weights converted, as
  `predict --dtype` runs them), and each dtype's answers against the CPU's in fp32;
- the training loop's step in bf16 and fp16 (Accelerate's autocast; fp16 with its gradient scaler): images/s and
  the fraction of the measured matmul peak;
- `affect-hf predict` end to end on generated two-face videos at 640 x 360 and 1920 x 1080, 1x and 4x long:
  frames/s, the share of decoding, detection + alignment and the model, and peak GPU memory;
- what `--dtype auto` and `--mixed_precision auto` pick on this device.
The figures are to be read beside py-feat's (355 frames/s end to end at batch 16 on a 472-frame, one-face 640 x 360
clip on an RTX PRO 6000; 202 on an RTX 3090; 38 at batch 1).
"""

import argparse
import sys

import torch

from affect_hf import benchmarking


# What each device runs: the paper's model and the sizes on a GPU; the tiny preset and a few frames on a CPU
# (the tests), where the same code paths run in seconds.
GPU_RUN = [
    "--preset", "base", "--dtype", "fp32", "bf16", "fp16", "--training-dtypes", "bf16", "fp16",
    "--inference-batch-sizes", "1", "16", "64", "--train-batch-size", "64", "--min-time", "2", "--max-steps", "50",
    "--video-frames", "120", "--video-batch-size", "16", "--video-sizes", "640x360", "1920x1080",
    "--corpus-processes", "0", "--matmul-time", "0.5", "--parity",
]  # fmt: skip
CPU_RUN = [
    "--preset", "tiny", "--dtype", "fp32", "bf16", "fp16", "--training-dtypes", "bf16", "fp16",
    "--inference-batch-sizes", "1", "2", "--train-batch-size", "2", "--steps", "1", "--warmup", "0",
    "--video-frames", "3", "--video-sizes", "320x180", "640x360", "--corpus-processes", "0",
    "--matmul-sizes", "64", "--matmul-time", "0.01", "--parity",
]  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", default=None, help="also write the report here")
    args, overrides = parser.parse_known_args(argv)
    run = GPU_RUN if args.device == "cuda" else CPU_RUN
    json_option = ["--json", args.json] if args.json else []
    # Later options win: anything given after ours (e.g. --video-frames 472) changes the run.
    return benchmarking.main(["--recipe", "emma", "--device", args.device, *run, *json_option, *overrides])


if __name__ == "__main__":
    main(sys.argv[1:])
