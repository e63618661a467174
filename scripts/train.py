"""Train a model: `accelerate launch scripts/train.py --recipe {emma,mae,cotex,dan} --data_dir ... --output_dir ...`.

All options of a recipe: `python scripts/train.py --recipe mae --help`; a YAML or JSON file of them may replace the
flags. The same as `affect-hf train ...`: a mistake ends in one line (`--debug` for the traceback).
"""

import sys

from affect_hf.cli import main


if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
