"""Train a model: `accelerate launch scripts/train.py --recipe emma --data_dir ... --output_dir ...`.

All options: `python scripts/train.py --help`; a YAML or JSON file of them may replace the flags.
"""

from affect_hf.training import main


if __name__ == "__main__":
    main()
