"""Configuration of DAN (Distract your Attention Network): a ResNet with four spatial/channel attention heads."""

from transformers import PreTrainedConfig, ResNetConfig

from .affect_labels import AFFECTNET_EXPRESSIONS


class DanConfig(PreTrainedConfig):
    r"""
    The ResNet part is described by flat fields (ResNet-18 by default) rather than a nested `ResNetConfig`, so that a
    composite config holding a `DanConfig` never pushes an attention implementation down to an attention-free CNN.

    Args:
        num_channels, embedding_size, hidden_sizes, depths: the ResNet (basic blocks, ReLU).
        num_heads: DAN's cross-attention heads (spatial then channel attention), fused by a
            log-softmax across heads.
        spatial_reduction: channel reduction inside the spatial attention (512 -> 256 in DAN).
        channel_reduction: bottleneck reduction of the channel attention (512 -> 32 in DAN).
        image_size: the training resolution, used by the image processor saved with the model.
        initializer_range: standard deviation of the heads' linear layers at initialisation (DAN: 0.001).
        affinity_loss_weight: weight of DAN's affinity loss (features pulled to learnable class centres, scaled by
            the centres' spread).
        partition_loss_weight: weight of DAN's partition loss (pushes the attention heads apart).
    """

    model_type = "dan"

    num_channels: int = 3
    embedding_size: int = 64
    hidden_sizes: list[int] | tuple[int, ...] = (64, 128, 256, 512)
    depths: list[int] | tuple[int, ...] = (2, 2, 2, 2)
    num_heads: int = 4
    spatial_reduction: int = 2
    channel_reduction: int = 16
    image_size: int = 224
    initializer_range: float = 0.001
    affinity_loss_weight: float = 1.0
    partition_loss_weight: float = 1.0

    def __post_init__(self, **kwargs):
        self.hidden_sizes = list(self.hidden_sizes)
        self.depths = list(self.depths)
        if self.id2label is None and kwargs.get("num_labels") is None:
            self.id2label = dict(enumerate(AFFECTNET_EXPRESSIONS))
            self.label2id = {name: index for index, name in self.id2label.items()}
        super().__post_init__(**kwargs)

    @property
    def resnet_config(self) -> ResNetConfig:
        return ResNetConfig(
            num_channels=self.num_channels,
            embedding_size=self.embedding_size,
            hidden_sizes=list(self.hidden_sizes),
            depths=list(self.depths),
            layer_type="basic",
            hidden_act="relu",
            downsample_in_first_stage=False,
        )


DanConfig.register_for_auto_class()

__all__ = ["DanConfig"]
