"""Affect over time: a transformer encoder over one face's frames, reading a frame-level model's per-frame feature and
scores, answering per frame in EMMA's contract (`valence_arousal`, 8 expression `logits`, 12 `au_logits`).

Frames are placed by their numbers with rotary positions, so gaps in a track (occlusion, frames without a face)
keep their length; masked frames are never attended to and never scored.
"""

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .affect_labels import MISSING_ACTION_UNIT, MISSING_EXPRESSION, MISSING_VALENCE_AROUSAL
from .configuration_temporal import TemporalAffectConfig
from .losses import affect_task_losses


@dataclass
class TemporalAffectOutput(ModelOutput):
    """
    loss: weighted sum of the three task losses over the valid, labelled frames.
    logits: B x T x 8 expression logits; valence_arousal: B x T x 2; au_logits: B x T x 12.
    va_loss, expression_loss, au_loss: the unweighted task losses, for logging.
    last_hidden_state: B x T x hidden, the encoder's output per frame.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    valence_arousal: torch.FloatTensor | None = None
    au_logits: torch.FloatTensor | None = None
    va_loss: torch.FloatTensor | None = None
    expression_loss: torch.FloatTensor | None = None
    au_loss: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None


def frame_inputs(outputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A frame model's outputs as this model reads them: (the pooled feature, the scores that feed EMMA's VA head:
    its CNN's 8 scores when it has a CNN, then the 8 expression and 12 AU logits), B x feature_size and
    B x num_scores. Torch and ONNX outputs alike."""
    parts = [outputs["cnn_logits"]] if outputs.get("cnn_logits") is not None else []
    parts += [outputs["logits"], outputs["au_logits"]]
    return outputs["pooler_output"], torch.cat([part.to(parts[-1].dtype) for part in parts], dim=-1)


def rotate(states: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary positions: channel pairs of `states` (B x heads x T x D) turned by `positions` (B x T, in frames)
    times each pair's frequency, so that a query-key product depends on how far apart the two frames are."""
    half = states.shape[-1] // 2
    frequencies = theta ** -(torch.arange(half, device=states.device, dtype=torch.float32) / half)
    angles = positions.float()[:, None, :, None] * frequencies  # B x 1 x T x D/2
    cos, sin = angles.cos().to(states.dtype), angles.sin().to(states.dtype)
    first, second = states[..., :half], states[..., half:]
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


class TemporalAttention(nn.Module):
    def __init__(self, config: TemporalAffectConfig):
        super().__init__()
        self.num_heads, self.theta, self.dropout = config.num_attention_heads, config.rope_theta, config.dropout
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, states: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        batch, length, width = states.shape
        query, key, value = self.qkv(states).view(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        query, key = rotate(query, positions, self.theta), rotate(key, positions, self.theta)
        attended = nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(attended.transpose(1, 2).reshape(batch, length, width))


class TemporalBlock(nn.Module):
    """Pre-norm: states + attention(norm(states)), then + MLP(norm(states))."""

    def __init__(self, config: TemporalAffectConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.hidden_size)
        self.attention = TemporalAttention(config)
        self.mlp_norm = nn.LayerNorm(config.hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(config.hidden_size, config.intermediate_size),
            nn.GELU(),
            nn.Linear(config.intermediate_size, config.hidden_size),
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, states: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        states = states + self.dropout(self.attention(self.attention_norm(states), positions, allowed))
        return states + self.dropout(self.mlp(self.mlp_norm(states)))


class TemporalAffectPreTrainedModel(PreTrainedModel):
    config: TemporalAffectConfig
    config_class = TemporalAffectConfig
    base_model_prefix = "temporal"
    main_input_name = "features"
    _no_split_modules = ["TemporalBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


class TemporalAffectModel(TemporalAffectPreTrainedModel):
    def __init__(self, config: TemporalAffectConfig):
        super().__init__(config)
        self.input_projection = nn.Linear(config.feature_size + config.num_scores, config.hidden_size)
        self.input_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(TemporalBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size)
        self.head = nn.Linear(config.hidden_size, 2 + config.num_labels + config.num_action_units)
        self.post_init()

    def attention_mask(self, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """B x 1 x T x T: which frames each frame attends to. Valid frames only (causal: no later frame); a masked
        frame attends to itself alone, so that no row is empty (its answer is never read)."""
        allowed = mask[:, None, :].expand(-1, mask.shape[1], -1)
        if self.config.causal:
            allowed = allowed & (positions[:, None, :] <= positions[:, :, None])
        itself = torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
        allowed = torch.where(mask[:, :, None], allowed, itself)
        return allowed[:, None]

    def forward(
        self,
        features: torch.Tensor,
        scores: torch.Tensor,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        valence_arousal: torch.Tensor | None = None,
        expression: torch.Tensor | None = None,
        action_units: torch.Tensor | None = None,
        **kwargs,
    ) -> TemporalAffectOutput:
        r"""
        features: B x T x feature_size, the frame model's pooled features of one face's frames, in time order.
        scores: B x T x num_scores, the frame model's scores of the same frames.
        positions: B x T frame numbers (default 0 .. T-1); only their differences matter.
        mask: B x T, True for a frame that holds the face (default all); the others are neither seen nor scored.
        valence_arousal (B x T x 2, -5 missing), expression (B x T, -1 missing), action_units (B x T x 12, -1
        missing): per-frame targets, as EMMA's.
        """
        batch, length = features.shape[:2]
        if positions is None:
            positions = torch.arange(length, device=features.device).expand(batch, -1)
        if mask is None:
            mask = torch.ones(batch, length, dtype=torch.bool, device=features.device)
        mask = mask.bool()
        positions = positions - positions[:, :1]  # rotary positions are relative: small angles, exact in fp32
        allowed = self.attention_mask(positions, mask)
        states = torch.cat([features, scores.to(features.dtype)], dim=-1)
        # A masked frame's inputs are never attended to; they are cleared so that whatever they hold (NaN from a
        # frame without a face) cannot reach a valid frame through a zero attention weight (0 x NaN is NaN).
        states = torch.where(mask[..., None], states, torch.zeros((), dtype=states.dtype, device=states.device))
        states = self.input_dropout(self.input_projection(states))
        for block in self.blocks:
            states = block(states, positions, allowed)
        states = self.norm(states)
        outputs = self.head(states)
        predicted_va = outputs[..., :2]
        expression_logits = outputs[..., 2 : 2 + self.config.num_labels]
        au_logits = outputs[..., 2 + self.config.num_labels :]

        # EMMA's loss over every frame, a masked frame's targets marked missing (it is never scored).
        valid, units = mask.reshape(-1), self.config.num_action_units
        targets = {
            "valence_arousal": None if valence_arousal is None else torch.where(
                valid[:, None], valence_arousal.reshape(-1, 2), MISSING_VALENCE_AROUSAL),
            "expression": None if expression is None else torch.where(
                valid, expression.reshape(-1), MISSING_EXPRESSION),
            "action_units": None if action_units is None else torch.where(
                valid[:, None], action_units.reshape(-1, units), MISSING_ACTION_UNIT),
        }  # fmt: skip
        loss, va_loss, expression_loss, au_loss = affect_task_losses(
            self.config, predicted_va.reshape(-1, 2), expression_logits.reshape(-1, self.config.num_labels),
            au_logits.reshape(-1, units), **targets,
        )  # fmt: skip

        return TemporalAffectOutput(
            loss=loss,
            logits=expression_logits,
            valence_arousal=predicted_va,
            au_logits=au_logits,
            va_loss=va_loss,
            expression_loss=expression_loss,
            au_loss=au_loss,
            last_hidden_state=states,
        )


TemporalAffectModel.register_for_auto_class("AutoModel")

__all__ = ["TemporalAffectModel", "TemporalAffectOutput", "TemporalAffectPreTrainedModel", "frame_inputs"]
