"""Configuration of EMMA: an MAE-pretrained ViT fused with a frozen expression CNN for multi-task affect analysis."""

from transformers import PreTrainedConfig, ViTMAEConfig

from .affect_labels import ABAW_EXPRESSIONS, ACTION_UNITS
from .configuration_dan import DanConfig


# Positive-class weights of the AU loss: negatives / positives per AU on the s-Aff-Wild2 training set, as
# used by the paper's authors. Training recomputes them from the training split by default.
S_AFF_WILD2_AU_POS_WEIGHT = (
    7.1008924,
    15.63964869,
    5.47108051,
    2.80360066,
    1.5152332,
    1.89083564,
    3.04637044,
    34.04600245,
    32.47861156,
    36.76637801,
    0.58118674,
    11.1586486,
)


def check_affect_head_fields(config: PreTrainedConfig, kwargs: dict) -> None:
    """The fields of a model answering in EMMA's terms (EMMA's and the temporal model's configs): the AU lists as
    plain lists of one entry per action unit, and the ABAW expressions as labels unless others are given."""
    config.au_pos_weight = [float(weight) for weight in config.au_pos_weight]
    config.au_thresholds = [float(threshold) for threshold in config.au_thresholds]
    config.au_names = list(config.au_names)
    if not len(config.au_pos_weight) == len(config.au_thresholds) == len(config.au_names):
        raise ValueError(
            f"au_pos_weight ({len(config.au_pos_weight)}), au_thresholds ({len(config.au_thresholds)}) and "
            f"au_names ({len(config.au_names)}) must have one entry per action unit"
        )
    if config.id2label is None and kwargs.get("num_labels") is None:
        config.id2label = dict(enumerate(ABAW_EXPRESSIONS))
        config.label2id = {name: index for index, name in config.id2label.items()}


class EmmaConfig(PreTrainedConfig):
    r"""
    Composite config: `vit_config` (a `ViTMAEConfig`, like CLIP's vision config) and `cnn_config` (a `DanConfig`).

    `cnn_config` is deliberately not a declared sub-config: transformers pushes `attn_implementation` down to
    declared sub-configs, and the attention-free CNN would reject "sdpa". It is serialised like one all the same.

    Args:
        vit_config: the ViT (dict or `ViTMAEConfig`). Its `mask_ratio` is ignored; EMMA never drops patches.
        cnn_config: the frozen CNN (dict or `DanConfig`); unused when `use_cnn_scores` is False.
        use_cnn_scores: feed the CNN's expression scores to the valence/arousal head (the paper). False builds
            no CNN at all: the paper's ablation where VA is regressed from the ViT scores alone.
        drop_path_rate: stochastic depth of the ViT's last layer (linear over the layers).
        pooling: "cls" or "mean" (see `MaeViTModel`).
        head_hidden_size: width of the ViT's expression+AU head (768 -> 512 -> 20).
        va_head_hidden_size: width of the VA head on the concatenated scores (28 -> 256 -> 2).
        va_loss_weight, expression_loss_weight, au_loss_weight: weights of the three task losses.
        au_pos_weight: `pos_weight` of each AU's binary cross-entropy (negatives / positives).
        au_thresholds: decision threshold of each AU on its *probability*.
        au_names: the AU names, in output order.
    """

    model_type = "emma"
    sub_configs_defaults = {"vit_config": ViTMAEConfig}

    vit_config: dict | ViTMAEConfig | None = None
    cnn_config: dict | DanConfig | None = None
    use_cnn_scores: bool = True
    drop_path_rate: float = 0.1
    pooling: str = "cls"
    head_hidden_size: int = 512
    va_head_hidden_size: int = 256
    va_loss_weight: float = 1.0
    expression_loss_weight: float = 1.0
    au_loss_weight: float = 1.0
    au_pos_weight: list[float] | tuple[float, ...] = S_AFF_WILD2_AU_POS_WEIGHT
    au_thresholds: list[float] | tuple[float, ...] = (0.5,) * len(ACTION_UNITS)
    au_names: list[str] | tuple[str, ...] = ACTION_UNITS

    def __post_init__(self, **kwargs):
        if isinstance(self.cnn_config, dict) or (self.cnn_config is None and self.use_cnn_scores):
            self.cnn_config = DanConfig(**(self.cnn_config or {}))
        check_affect_head_fields(self, kwargs)
        super().__post_init__(**kwargs)

    @property
    def num_action_units(self) -> int:
        return len(self.au_names)

    @property
    def image_size(self) -> int:
        size = self.vit_config.image_size
        return size if isinstance(size, int) else size[0]


EmmaConfig.register_for_auto_class()

__all__ = ["EmmaConfig", "S_AFF_WILD2_AU_POS_WEIGHT", "check_affect_head_fields"]
