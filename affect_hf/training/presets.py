"""Named model sizes for `--model_config`, for every recipe: the paper's size ("base") and a tiny one for tests,
demos and CI ("tiny", seconds per epoch on two CPU cores). A JSON file of config fields works too."""

import json
from pathlib import Path

from transformers import PreTrainedConfig, ViTMAEConfig

from ..modeling import CotexConfig, DanConfig, EmmaConfig


# The ViT of every recipe: ViT-B/16 at 224 px (MAE base), or a tiny one at 32 px.
VIT_PRESETS: dict[str, dict] = {
    "base": {"image_size": 224, "patch_size": 16},
    "tiny": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "image_size": 32,
        "patch_size": 8,
    },
}
# MAE's decoder: the paper's 8 layers of 512 (transformers' default), or a tiny one.
MAE_DECODER_PRESETS: dict[str, dict] = {
    "base": {},
    "tiny": {
        "decoder_hidden_size": 32,
        "decoder_num_hidden_layers": 1,
        "decoder_num_attention_heads": 2,
        "decoder_intermediate_size": 64,
    },
}
DAN_PRESETS: dict[str, dict] = {
    "base": {},  # ResNet-18 at 224 px, as DAN
    "tiny": {"embedding_size": 8, "hidden_sizes": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "image_size": 32},
}
EMMA_PRESETS: dict[str, dict] = {
    "base": {"vit_config": {**VIT_PRESETS["base"], "mask_ratio": 0.0}, "cnn_config": DAN_PRESETS["base"]},
    "tiny": {
        "vit_config": {**VIT_PRESETS["tiny"], "mask_ratio": 0.0},
        "cnn_config": DAN_PRESETS["tiny"],
        "head_hidden_size": 64,
        "va_head_hidden_size": 32,
    },
}
COTEX_PRESETS: dict[str, dict] = {name: {"vit_config": {**vit, "mask_ratio": 0.0}} for name, vit in VIT_PRESETS.items()}
MAE_PRESETS: dict[str, dict] = {
    name: {**VIT_PRESETS[name], **MAE_DECODER_PRESETS[name], "mask_ratio": 0.75, "norm_pix_loss": True}
    for name in VIT_PRESETS
}
PRESETS_BY_CONFIG: dict[type, dict[str, dict]] = {
    EmmaConfig: EMMA_PRESETS,
    CotexConfig: COTEX_PRESETS,
    ViTMAEConfig: MAE_PRESETS,
    DanConfig: DAN_PRESETS,
}


def config_from_preset(config_class: type[PreTrainedConfig], name_or_file: str, **overrides) -> PreTrainedConfig:
    """A preset name ("tiny", "base") or a JSON file of `config_class` fields; `overrides` win."""
    presets = PRESETS_BY_CONFIG[config_class]
    if name_or_file in presets:
        fields = json.loads(json.dumps(presets[name_or_file]))
    elif Path(name_or_file).is_file():
        with open(name_or_file, encoding="utf-8") as handle:
            fields = json.load(handle)
    else:
        raise ValueError(f"--model_config {name_or_file!r} is neither a preset ({', '.join(presets)}) nor a file")
    fields.update(overrides)
    return config_class(**fields)


def emma_config_from_preset(name_or_file: str, **overrides) -> EmmaConfig:
    return config_from_preset(EmmaConfig, name_or_file, **overrides)
