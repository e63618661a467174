"""Masked CoTEX (ABAW4, arXiv 2207.11679): expression recognition learned from synthetic faces by co-training.

Several MAE ViTs (views) see the same face, each with its own random patches dropped; only the kept tokens go
through each encoder, so a step at mask ratio 0.75 costs about a quarter of one at 0. The loss is the views'
mean cross-entropy plus a Jensen-Shannon term that makes the views agree. At evaluation nothing is dropped and
the views' logits are averaged.
"""

import copy
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .affect_labels import MISSING_EXPRESSION
from .auto_map import add_auto_map_entries
from .configuration_cotex import CotexConfig
from .losses import generalized_js_divergence, masked_cross_entropy
from .modeling_vit_backbone import MaeViTModel


@dataclass
class CotexOutput(ModelOutput):
    """
    loss: cross_entropy_weight x cross_entropy_loss + js_weight x js_loss.
    logits: B x classes, the mean of the views' logits (what the image-classification pipeline reads).
    view_logits: B x views x classes.
    cross_entropy_loss: the views' mean cross-entropy over labelled samples (-1 marks an unlabelled one).
    js_loss: the generalised Jensen-Shannon divergence between the views' predicted distributions.
    pooler_output: B x hidden, the mean of the views' pooled features.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    view_logits: torch.FloatTensor | None = None
    cross_entropy_loss: torch.FloatTensor | None = None
    js_loss: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None


class CotexPreTrainedModel(PreTrainedModel):
    config: CotexConfig
    config_class = CotexConfig
    base_model_prefix = "cotex"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _no_split_modules = ["ViTMAEEmbeddings", "MaeViTLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The heads only (MAE fine-tuning's tiny init); the nested ViTs keep their own initialisation."""
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=self.config.head_initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)

    def save_pretrained(self, save_directory, *args, **kwargs):
        add_auto_map_entries(self, ("AutoModelForImageClassification",))
        return super().save_pretrained(save_directory, *args, **kwargs)


class CotexForImageClassification(CotexPreTrainedModel):
    def __init__(self, config: CotexConfig):
        super().__init__(config)
        # Private config copies: ViTMAE modules read settings from their config object at call time.
        self.views = nn.ModuleList(
            [
                MaeViTModel(copy.deepcopy(config.vit_config), config.drop_path_rate, pooling=config.pooling)
                for _ in range(config.num_views)
            ]
        )
        self.heads = nn.ModuleList(
            [nn.Linear(config.vit_config.hidden_size, config.num_labels) for _ in range(config.num_views)]
        )
        self.post_init()

    @classmethod
    def from_pretrained_parts(cls, vit_paths: str | list[str], **config_kwargs) -> "CotexForImageClassification":
        """Views initialised from saved MAE folders (`ViTMAEModel` / `ViTMAEForPreTraining`); fresh heads.

        With several folders, views are shared out in order, as the authors do: 4 views from 2 folders take the
        first folder twice, then the second twice. `config_kwargs` set the other `CotexConfig` fields.
        """
        vit_paths = [vit_paths] if isinstance(vit_paths, str) else list(vit_paths)
        num_views = config_kwargs.pop("num_views", len(vit_paths) if len(vit_paths) > 1 else 2)
        if num_views % len(vit_paths):
            raise ValueError(f"{num_views} views cannot be shared equally among {len(vit_paths)} MAE folders")
        backbones = [MaeViTModel.from_pretrained(path) for path in vit_paths]
        vit_config = backbones[0].config.to_dict()
        vit_config["mask_ratio"] = 0.0
        model = cls(CotexConfig(vit_config=vit_config, num_views=num_views, **config_kwargs))
        views_per_folder = num_views // len(vit_paths)
        for index, view in enumerate(model.views):
            source = backbones[index // views_per_folder]
            # Only a "mean"-pooling norm may be missing from an MAE checkpoint: it is new in fine-tuning.
            incompatible = view.load_state_dict(source.state_dict(), strict=False)
            if incompatible.unexpected_keys or any(not k.startswith("fc_norm.") for k in incompatible.missing_keys):
                raise ValueError(f"{vit_paths[index // views_per_folder]} does not match the ViT: {incompatible}")
        return model

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs,
    ) -> CotexOutput:
        r"""
        labels: B class indices (LSD order); -1 marks an unlabelled sample (it still counts for agreement).
        mask_ratio: patches each view drops; default `config.mask_ratio` in training mode and 0 in eval mode.
        """
        if mask_ratio is None:
            mask_ratio = self.config.mask_ratio if self.training else 0.0
        view_logits, pooled = [], []
        for view, head in zip(self.views, self.heads, strict=True):
            features = view(pixel_values, mask_ratio=mask_ratio, interpolate_pos_encoding=interpolate_pos_encoding)
            view_logits.append(head(features.pooler_output))
            pooled.append(features.pooler_output)
        stacked = torch.stack(view_logits, dim=1)
        loss = cross_entropy = js = None
        if labels is not None:
            cross_entropy = torch.stack(
                [masked_cross_entropy(logits, labels, MISSING_EXPRESSION) for logits in view_logits]
            ).mean()
            loss = self.config.cross_entropy_weight * cross_entropy
            if len(view_logits) > 1:
                js = generalized_js_divergence(view_logits, self.config.js_reduction, self.config.probability_floor)
                loss = loss + self.config.js_weight * js
        return CotexOutput(
            loss=loss,
            logits=stacked.mean(dim=1),
            view_logits=stacked,
            cross_entropy_loss=cross_entropy,
            js_loss=js,
            pooler_output=torch.stack(pooled).mean(0),
        )


CotexForImageClassification.register_for_auto_class("AutoModel")

__all__ = ["CotexForImageClassification", "CotexOutput", "CotexPreTrainedModel"]
