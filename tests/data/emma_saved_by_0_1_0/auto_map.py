"""Lets one saved folder serve several Auto classes (e.g. AutoModel and the image-classification pipeline)."""

from transformers import PreTrainedModel


def add_auto_map_entries(model: PreTrainedModel, auto_classes: tuple[str, ...]) -> None:
    """Point extra Auto classes of `model.config.auto_map` at the model's own class.

    `register_for_auto_class` records a single Auto class per model class; the others are seeded here before
    `save_pretrained` writes `config.json`, so `trust_remote_code` loading works through each of them.
    """
    module_name = type(model).__module__.split(".")[-1]
    auto_map = dict(getattr(model.config, "auto_map", None) or {})
    for auto_class in auto_classes:
        auto_map.setdefault(auto_class, f"{module_name}.{type(model).__name__}")
    model.config.auto_map = auto_map
