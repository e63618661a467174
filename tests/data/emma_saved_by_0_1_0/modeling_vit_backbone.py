"""A ViTMAE encoder made fit for fine-tuning: stochastic depth, a mask ratio per call, and pooling.

`ViTMAEModel` always shuffles its patch tokens, reads the mask ratio from the (shared) config and has no
stochastic depth. `MaeViTModel` keeps ViTMAE's modules and weight names, so any `ViTMAEModel` or
`ViTMAEForPreTraining` checkpoint loads into it unchanged, and replaces only the forward pass.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import ViTMAEConfig
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.models.vit_mae.modeling_vit_mae import (
    ViTMAEEmbeddings,
    ViTMAELayer,
    ViTMAEPreTrainedModel,
)
from transformers.utils import ModelOutput


POOLING_MODES = ("cls", "mean")

# Read and write ViTMAE's on-disk weight names (transformers renames them in memory for its own ViTMAEModel): any
# MAE checkpoint, of any transformers version, loads unchanged, and our saved ViT weights are ViTMAE's.
register_checkpoint_conversion_mapping(
    "MaeViTModel",
    get_checkpoint_conversion_mapping("ViTMAEModel") or get_checkpoint_conversion_mapping("ViTModel"),
    overwrite=True,
)


class DropPath(nn.Module):
    """Stochastic depth: drops a whole residual branch per sample during training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        keep = torch.empty(shape, dtype=hidden_states.dtype, device=hidden_states.device).bernoulli_(keep_prob)
        return hidden_states * keep / keep_prob

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


class MaeViTLayer(ViTMAELayer):
    """A ViTMAE layer with stochastic depth on both residual branches; returns the attention weights too."""

    def __init__(self, config: ViTMAEConfig, drop_path_rate: float = 0.0):
        super().__init__(config)
        self.drop_path = DropPath(drop_path_rate)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        normed = self.layernorm_before(hidden_states)
        attention_output, attention_weights = self.attention(normed, attention_mask, **kwargs)
        hidden_states = hidden_states + self.drop_path(self.dropout(attention_output))
        mlp_output = self.mlp(self.layernorm_after(hidden_states))
        hidden_states = hidden_states + self.drop_path(self.dropout(mlp_output))
        return hidden_states, attention_weights


@dataclass
class MaeViTModelOutput(ModelOutput):
    """
    pooler_output: the pooled image feature ("cls" or "mean" pooling).
    mask: 1 for each dropped patch, 0 for each kept one (raster order); None when nothing was dropped.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    mask: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def random_patch_keep_indices(
    batch_size: int, num_patches: int, mask_ratio: float, device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Indices (B x kept) of the patches each sample keeps, like MAE: argsort of uniform noise."""
    num_kept = max(1, int(num_patches * (1.0 - mask_ratio)))
    noise = torch.rand(batch_size, num_patches, device=device, generator=generator)
    return torch.argsort(noise, dim=1)[:, :num_kept]


class MaeViTModel(ViTMAEPreTrainedModel):
    """ViTMAE encoder for fine-tuning.

    Args:
        config: a `ViTMAEConfig`; its `mask_ratio` is ignored (the ratio is an argument of `forward`).
        drop_path_rate: stochastic depth of the last layer; it rises linearly from 0 over the layers.
        pooling: "cls" (final LayerNorm, then the class token) or "mean" (mean of the patch tokens, then
            `fc_norm`, as MAE's own fine-tuning).
    """

    # An MAE pretraining checkpoint also holds the decoder, which fine-tuning drops.
    _keys_to_ignore_on_load_unexpected = [r"^decoder\."]

    def __init__(self, config: ViTMAEConfig, drop_path_rate: float = 0.0, pooling: str = "cls"):
        super().__init__(config)
        if pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
        self.pooling = pooling
        self.embeddings = ViTMAEEmbeddings(config)
        rates = torch.linspace(0, drop_path_rate, config.num_hidden_layers).tolist()
        self.layers = nn.ModuleList([MaeViTLayer(config, rate) for rate in rates])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.fc_norm = None
        if pooling == "mean":
            # MAE's fine-tuning pools before the final norm and learns a fresh one; the pretrained final norm
            # is kept (frozen) only so that every MAE checkpoint still loads without unexpected keys.
            self.fc_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.layernorm.requires_grad_(False)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embeddings

    def forward(
        self,
        pixel_values: torch.Tensor,
        mask_ratio: float = 0.0,
        patch_keep_indices: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> MaeViTModelOutput:
        r"""
        mask_ratio: fraction of patches dropped at random per sample (MAE-style). At 0 every patch is kept in
            raster order and no random number is drawn, so evaluation is deterministic.
        patch_keep_indices: B x K indices of the patches to keep, overriding `mask_ratio` (e.g. to give
            several models the same view).
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")

        embeddings = self.embeddings
        height, width = pixel_values.shape[-2:]
        if interpolate_pos_encoding:
            position_embeddings = embeddings.interpolate_pos_encoding(
                embeddings.patch_embeddings(pixel_values), height, width
            )
        else:
            if (height, width) != tuple(embeddings.image_size):
                raise ValueError(
                    f"Input image size ({height}*{width}) doesn't match model ({embeddings.image_size[0]}*"
                    f"{embeddings.image_size[1]}); pass interpolate_pos_encoding=True for other sizes."
                )
            position_embeddings = embeddings.position_embeddings
        position_embeddings = position_embeddings.to(pixel_values.dtype)
        patches = embeddings.patch_embeddings(pixel_values) + position_embeddings[:, 1:, :]

        batch_size, num_patches, hidden_size = patches.shape
        mask = None
        if patch_keep_indices is None and mask_ratio > 0.0:
            patch_keep_indices = random_patch_keep_indices(batch_size, num_patches, mask_ratio, patches.device)
        if patch_keep_indices is not None:
            patches = torch.gather(patches, 1, patch_keep_indices.unsqueeze(-1).expand(-1, -1, hidden_size))
            mask = torch.ones(batch_size, num_patches, dtype=torch.long, device=patches.device)
            mask.scatter_(1, patch_keep_indices, 0)

        cls_token = (embeddings.cls_token + position_embeddings[:, :1, :]).expand(batch_size, -1, -1)
        hidden_states = torch.cat([cls_token, patches], dim=1)

        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            hidden_states, attention_weights = layer(hidden_states)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (attention_weights,)

        if self.pooling == "mean":
            pooled = self.fc_norm(hidden_states[:, 1:, :].mean(dim=1))
            last_hidden_state = hidden_states
        else:
            last_hidden_state = self.layernorm(hidden_states)
            pooled = last_hidden_state[:, 0]

        return MaeViTModelOutput(
            last_hidden_state=last_hidden_state,
            pooler_output=pooled,
            mask=mask,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )
