"""EMMA: Expression-aware Multi-task learning with a Masked-Autoencoder ViT (ABAW4, arXiv 2207.11679).

The fine-tuned MAE ViT predicts 8 expression logits and 12 AU logits through one MLP head. A frozen expression CNN
(DAN, pretrained on AffectNet) gives 8 expression scores. Valence/arousal are regressed from the concatenated
*scores* (8 + 20), not from features: the paper finds scores the cleaner signal for VA.
"""

import copy
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .auto_map import add_auto_map_entries
from .configuration_emma import EmmaConfig
from .losses import affect_task_losses
from .modeling_dan import DanForImageClassification
from .modeling_vit_backbone import MaeViTModel
from .pipeline_affect import custom_pipeline_entry


@dataclass
class EmmaOutput(ModelOutput):
    """
    loss: weighted sum of the three task losses (only labelled entries count).
    logits: the 8 expression logits (what the image-classification pipeline reads).
    valence_arousal: B x 2 regressed valence and arousal.
    au_logits: B x 12 action-unit logits (apply a sigmoid, then `config.au_thresholds`).
    cnn_logits: B x 8 scores of the frozen CNN (AffectNet order), None without CNN.
    va_loss, expression_loss, au_loss: the unweighted task losses, for logging.
    pooler_output: B x hidden, the ViT's pooled feature that the heads read (a face's appearance, for tracking, and
        the input of models over time).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    valence_arousal: torch.FloatTensor | None = None
    au_logits: torch.FloatTensor | None = None
    cnn_logits: torch.FloatTensor | None = None
    va_loss: torch.FloatTensor | None = None
    expression_loss: torch.FloatTensor | None = None
    au_loss: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    pooler_output: torch.FloatTensor | None = None


class EmmaPreTrainedModel(PreTrainedModel):
    config: EmmaConfig
    config_class = EmmaConfig
    # Not "vit": a prefix equal to a sub-module name makes transformers rename sibling weights on save.
    base_model_prefix = "emma"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _no_split_modules = ["ViTMAEEmbeddings", "MaeViTLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The heads only: the nested ViT and CNN keep their own initialisation."""
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                init.zeros_(module.bias)

    def save_pretrained(self, save_directory, *args, **kwargs):
        add_auto_map_entries(self, ("AutoModelForImageClassification",))
        # Importing the pipeline module above also makes transformers copy it into the folder with this file.
        self.config.custom_pipelines = custom_pipeline_entry()
        return super().save_pretrained(save_directory, *args, **kwargs)


class EmmaForAffectAnalysis(EmmaPreTrainedModel):
    def __init__(self, config: EmmaConfig):
        super().__init__(config)
        num_expressions = config.num_labels
        num_scores = num_expressions + config.num_action_units
        # A private copy: ViTMAE modules read settings from their config object at call time.
        vit_config = copy.deepcopy(config.vit_config)
        self.vit = MaeViTModel(vit_config, drop_path_rate=config.drop_path_rate, pooling=config.pooling)
        self.head = nn.Sequential(
            nn.Linear(vit_config.hidden_size, config.head_hidden_size),
            nn.ReLU(),
            nn.Linear(config.head_hidden_size, num_scores),
        )
        self.cnn = None
        num_va_inputs = num_scores
        if config.use_cnn_scores:
            self.cnn = DanForImageClassification(config.cnn_config)
            self.cnn.requires_grad_(False)
            num_va_inputs += config.cnn_config.num_labels
        self.va_head = nn.Sequential(
            nn.Linear(num_va_inputs, config.va_head_hidden_size),
            nn.ReLU(),
            nn.Linear(config.va_head_hidden_size, 2),
        )
        self.post_init()

    def train(self, mode: bool = True) -> "EmmaForAffectAnalysis":
        """The CNN is a frozen feature extractor: it stays in eval mode so its BatchNorm statistics never move."""
        super().train(mode)
        if self.cnn is not None:
            self.cnn.eval()
        return self

    @classmethod
    def from_pretrained_parts(
        cls, vit_path: str, cnn_path: str | None = None, **config_kwargs
    ) -> "EmmaForAffectAnalysis":
        """Assemble EMMA from a saved MAE (`ViTMAEModel` / `ViTMAEForPreTraining`) and a saved DAN folder.

        This is how the paper's two pretrained models come together; the heads start fresh. `config_kwargs`
        set the other `EmmaConfig` fields (drop path, loss weights, ...).
        """
        vit = MaeViTModel.from_pretrained(vit_path)
        cnn = DanForImageClassification.from_pretrained(cnn_path) if cnn_path is not None else None
        vit_config = vit.config.to_dict()
        vit_config["mask_ratio"] = 0.0
        config = EmmaConfig(
            vit_config=vit_config,
            cnn_config=cnn.config.to_dict() if cnn is not None else None,
            use_cnn_scores=cnn is not None,
            **config_kwargs,
        )
        model = cls(config)
        # Only a "mean"-pooling norm may be missing from an MAE checkpoint: it is new in fine-tuning.
        incompatible = model.vit.load_state_dict(vit.state_dict(), strict=False)
        if incompatible.unexpected_keys or any(not key.startswith("fc_norm.") for key in incompatible.missing_keys):
            raise ValueError(f"{vit_path} does not match the ViT: {incompatible}")
        if cnn is not None:
            model.cnn.load_state_dict(cnn.state_dict())
        return model

    def forward(
        self,
        pixel_values: torch.Tensor,
        valence_arousal: torch.Tensor | None = None,
        expression: torch.Tensor | None = None,
        action_units: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        interpolate_pos_encoding: bool = False,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> EmmaOutput:
        r"""
        valence_arousal: B x 2 targets in [-1, 1]; -5 marks a missing value.
        expression: B class indices (ABAW order); -1 marks a missing label.
        action_units: B x 12 in {0, 1}; -1 marks a missing label.
        labels: alias of `expression`, so generic image-classification code can train the expression task.
        """
        if expression is None:
            expression = labels
        vit_outputs = self.vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        scores = self.head(vit_outputs.pooler_output)
        num_expressions = self.config.num_labels
        expression_logits, au_logits = scores[:, :num_expressions], scores[:, num_expressions:]

        cnn_logits = None
        va_inputs = scores
        if self.cnn is not None:
            with torch.no_grad():
                cnn_logits = self.cnn(pixel_values).logits
            va_inputs = torch.cat([cnn_logits.to(scores.dtype), scores], dim=1)
        predicted_va = self.va_head(va_inputs)

        loss, va_loss, expression_loss, au_loss = affect_task_losses(
            self.config, predicted_va, expression_logits, au_logits, valence_arousal, expression, action_units
        )

        return EmmaOutput(
            loss=loss,
            logits=expression_logits,
            valence_arousal=predicted_va,
            au_logits=au_logits,
            cnn_logits=cnn_logits,
            va_loss=va_loss,
            expression_loss=expression_loss,
            au_loss=au_loss,
            hidden_states=vit_outputs.hidden_states,
            attentions=vit_outputs.attentions,
            pooler_output=vit_outputs.pooler_output,
        )


EmmaForAffectAnalysis.register_for_auto_class("AutoModel")

__all__ = ["EmmaForAffectAnalysis", "EmmaOutput", "EmmaPreTrainedModel"]
