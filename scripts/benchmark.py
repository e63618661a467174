"""Benchmark a recipe's model on this machine: `python scripts/benchmark.py [--recipe emma|mae|cotex|dan]
[--preset base] [--device cpu|cuda] [--dtype both] [--mask-ratios 0 0.75] [--backends] [--json out.json]`.

The measuring code and every option are in `affect_hf.benchmarking` (`python scripts/benchmark.py --help`).
"""

from affect_hf.benchmarking import main


if __name__ == "__main__":
    main()
