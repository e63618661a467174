"""DAN (Distract your Attention Network, Wen et al. 2021): the AffectNet expression CNN that EMMA keeps frozen."""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel, ResNetModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .affect_labels import MISSING_EXPRESSION
from .auto_map import add_auto_map_entries
from .configuration_dan import DanConfig
from .losses import masked_cross_entropy


class DanSpatialAttention(nn.Module):
    """Multi-shape convolutions summed into one spatial attention map that reweights the feature map."""

    def __init__(self, channels: int, reduced_channels: int):
        super().__init__()
        self.conv1x1 = nn.Sequential(nn.Conv2d(channels, reduced_channels, 1), nn.BatchNorm2d(reduced_channels))
        self.conv_3x3 = nn.Sequential(nn.Conv2d(reduced_channels, channels, 3, padding=1), nn.BatchNorm2d(channels))
        self.conv_1x3 = nn.Sequential(
            nn.Conv2d(reduced_channels, channels, (1, 3), padding=(0, 1)), nn.BatchNorm2d(channels)
        )
        self.conv_3x1 = nn.Sequential(
            nn.Conv2d(reduced_channels, channels, (3, 1), padding=(1, 0)), nn.BatchNorm2d(channels)
        )
        self.relu = nn.ReLU()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        reduced = self.conv1x1(features)
        attention = self.relu(self.conv_3x3(reduced) + self.conv_1x3(reduced) + self.conv_3x1(reduced))
        return features * attention.sum(dim=1, keepdim=True)


class DanChannelAttention(nn.Module):
    """Squeeze-and-excitation over the pooled, spatially attended features."""

    def __init__(self, channels: int, bottleneck: int):
        super().__init__()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.attention = nn.Sequential(
            nn.Linear(channels, bottleneck),
            nn.BatchNorm1d(bottleneck),
            nn.ReLU(inplace=True),
            nn.Linear(bottleneck, channels),
            nn.Sigmoid(),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = self.gap(features).flatten(1)
        return pooled * self.attention(pooled)


class DanAttentionHead(nn.Module):
    def __init__(self, config: DanConfig):
        super().__init__()
        channels = config.hidden_sizes[-1]
        self.sa = DanSpatialAttention(channels, channels // config.spatial_reduction)
        self.ca = DanChannelAttention(channels, max(1, channels // config.channel_reduction))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.ca(self.sa(features))


@dataclass
class DanOutput(ModelOutput):
    """
    loss: cross_entropy_loss + affinity_loss_weight x affinity_loss + partition_loss_weight x partition_loss.
    features: the heads' fused feature (B x C) that the classifier reads.
    cross_entropy_loss, affinity_loss, partition_loss: DAN's three training losses, for logging.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    features: torch.FloatTensor | None = None
    cross_entropy_loss: torch.FloatTensor | None = None
    affinity_loss: torch.FloatTensor | None = None
    partition_loss: torch.FloatTensor | None = None


def affinity_loss(features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """DAN's affinity loss: squared distance of each feature to its class centre, over the centres' total variance.

    Averaged over the batch; the centres are learned with the model.
    """
    distances = (features.float() - centers.float()[labels]).pow(2).sum(dim=1).clamp(min=1e-12, max=1e12)
    return distances.mean() / centers.float().var(dim=0).sum()


def partition_loss(heads: torch.Tensor) -> torch.Tensor:
    """DAN's partition loss: log(1 + heads / variance across the heads), small when the heads attend apart."""
    num_heads = heads.shape[1]
    if num_heads < 2:
        return heads.sum() * 0.0
    variance = heads.float().var(dim=1).mean()
    return torch.log(1 + num_heads / (variance + torch.finfo(torch.float32).eps))


class DanPreTrainedModel(PreTrainedModel):
    config: DanConfig
    config_class = DanConfig
    base_model_prefix = "dan"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """DAN's head initialisation; the nested ResNet keeps its own."""
        if isinstance(module, DanForImageClassification):
            init.normal_(module.class_centers, std=1.0)  # DAN's torch.randn centres
        elif isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)

    def save_pretrained(self, save_directory, *args, **kwargs):
        add_auto_map_entries(self, ("AutoModel",))
        return super().save_pretrained(save_directory, *args, **kwargs)


class DanForImageClassification(DanPreTrainedModel):
    """ResNet features -> `num_heads` attention heads -> log-softmax across heads -> sum -> fc -> BatchNorm1d."""

    def __init__(self, config: DanConfig):
        super().__init__(config)
        self.resnet = ResNetModel(config.resnet_config)
        self.heads = nn.ModuleList([DanAttentionHead(config) for _ in range(config.num_heads)])
        self.fc = nn.Linear(config.hidden_sizes[-1], config.num_labels)
        self.bn = nn.BatchNorm1d(config.num_labels)
        # The affinity loss's class centres, in the pooled ResNet feature space (learned in training only).
        self.class_centers = nn.Parameter(torch.empty(config.num_labels, config.hidden_sizes[-1]))
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs) -> DanOutput:
        r"""
        labels: class indices in the config's label order; -1 marks a missing label and is ignored.
        """
        feature_map = self.resnet(pixel_values).last_hidden_state
        heads = torch.stack([head(feature_map) for head in self.heads], dim=1)
        if heads.shape[1] > 1:
            heads = nn.functional.log_softmax(heads, dim=1)
        features = heads.sum(dim=1)
        logits = self.bn(self.fc(features))

        loss = cross_entropy = affinity = partition = None
        if labels is not None:
            valid = labels != MISSING_EXPRESSION
            cross_entropy = masked_cross_entropy(logits, labels, MISSING_EXPRESSION)
            pooled = feature_map.mean(dim=(2, 3))
            affinity = (
                affinity_loss(pooled[valid], labels[valid], self.class_centers)
                if valid.any()
                else self.class_centers.sum() * 0.0
            )
            partition = partition_loss(heads)
            loss = (
                cross_entropy
                + self.config.affinity_loss_weight * affinity
                + self.config.partition_loss_weight * partition
            )
        return DanOutput(
            loss=loss,
            logits=logits,
            features=features,
            cross_entropy_loss=cross_entropy,
            affinity_loss=affinity,
            partition_loss=partition,
        )


DanForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = ["DanForImageClassification", "DanPreTrainedModel"]
