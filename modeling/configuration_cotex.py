"""Configuration of masked CoTEX: MAE ViTs co-trained on differently masked views of each face (ABAW4 LSD track)."""

from transformers import PreTrainedConfig, ViTMAEConfig

from .affect_labels import LSD_EXPRESSIONS


JS_REDUCTIONS = ("mean", "batchmean")


class CotexConfig(PreTrainedConfig):
    r"""
    Args:
        vit_config: the ViT of every view (dict or `ViTMAEConfig`); its `mask_ratio` is ignored.
        num_views: how many ViTs are co-trained (the authors: 2).
        mask_ratio: fraction of patches each view drops, independently, during training; none at evaluation.
        js_weight: weight of the Jensen-Shannon consistency term (the authors: 100, with `js_reduction="mean"`).
        js_reduction: "mean" averages each KL term over batch x classes, as the authors' code does; "batchmean" sums
            over classes and averages over the batch (the textbook KL): it is `num_labels` times larger.
        cross_entropy_weight: weight of the views' mean cross-entropy.
        probability_floor: probabilities are clamped at this value inside the logarithms (the authors: 1e-4).
        drop_path_rate: stochastic depth of each ViT's last layer (linear over the layers).
        pooling: "cls" (the authors) or "mean" (see `MaeViTModel`).
        head_initializer_range: standard deviation of each view's linear head at initialisation (MAE: 2e-5).
    """

    model_type = "cotex"
    sub_configs_defaults = {"vit_config": ViTMAEConfig}

    vit_config: dict | ViTMAEConfig | None = None
    num_views: int = 2
    mask_ratio: float = 0.75
    js_weight: float = 100.0
    js_reduction: str = "mean"
    cross_entropy_weight: float = 1.0
    probability_floor: float = 1e-4
    drop_path_rate: float = 0.1
    pooling: str = "cls"
    head_initializer_range: float = 2e-5

    def __post_init__(self, **kwargs):
        if self.num_views < 1:
            raise ValueError(f"num_views must be at least 1, got {self.num_views}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.js_reduction not in JS_REDUCTIONS:
            raise ValueError(f"js_reduction must be one of {JS_REDUCTIONS}, got {self.js_reduction!r}")
        if self.id2label is None and kwargs.get("num_labels") is None:
            self.id2label = dict(enumerate(LSD_EXPRESSIONS))
            self.label2id = {name: index for index, name in self.id2label.items()}
        super().__post_init__(**kwargs)

    @property
    def image_size(self) -> int:
        size = self.vit_config.image_size
        return size if isinstance(size, int) else size[0]


CotexConfig.register_for_auto_class()

__all__ = ["CotexConfig"]
