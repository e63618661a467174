"""Named model sizes for `--model_config`: the paper's size and a tiny one for tests, demos and CI."""

import json
from pathlib import Path

from modeling import EmmaConfig


EMMA_PRESETS: dict[str, dict] = {
    # ViT-B/16 at 224 px (MAE base) + ResNet-18 DAN, as in the paper.
    "base": {"vit_config": {"image_size": 224, "patch_size": 16, "mask_ratio": 0.0}, "cnn_config": {}},
    # A few thousand parameters per layer: trains in about a minute on two CPU cores.
    "tiny": {
        "vit_config": {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 128,
            "image_size": 32,
            "patch_size": 8,
            "mask_ratio": 0.0,
        },
        "cnn_config": {"embedding_size": 8, "hidden_sizes": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "image_size": 32},
        "head_hidden_size": 64,
        "va_head_hidden_size": 32,
    },
}


def emma_config_from_preset(name_or_file: str, **overrides) -> EmmaConfig:
    """A preset name ("tiny", "base") or a JSON file of `EmmaConfig` fields; `overrides` win."""
    if name_or_file in EMMA_PRESETS:
        fields = json.loads(json.dumps(EMMA_PRESETS[name_or_file]))
    elif Path(name_or_file).is_file():
        with open(name_or_file, encoding="utf-8") as handle:
            fields = json.load(handle)
    else:
        raise ValueError(f"--model_config {name_or_file!r} is neither a preset ({', '.join(EMMA_PRESETS)}) nor a file")
    fields.update(overrides)
    return EmmaConfig(**fields)
