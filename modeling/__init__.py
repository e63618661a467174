"""The model code that travels to the Hub with every checkpoint: torch and transformers only."""

from .configuration_cotex import CotexConfig
from .configuration_dan import DanConfig
from .configuration_emma import EmmaConfig
from .configuration_temporal import TemporalAffectConfig
from .modeling_cotex import CotexForImageClassification, CotexOutput
from .modeling_dan import DanForImageClassification
from .modeling_emma import EmmaForAffectAnalysis, EmmaOutput
from .modeling_temporal import TemporalAffectModel, TemporalAffectOutput
from .modeling_vit_backbone import MaeViTModel


__all__ = [
    "CotexConfig",
    "CotexForImageClassification",
    "CotexOutput",
    "DanConfig",
    "DanForImageClassification",
    "EmmaConfig",
    "EmmaForAffectAnalysis",
    "EmmaOutput",
    "MaeViTModel",
    "TemporalAffectConfig",
    "TemporalAffectModel",
    "TemporalAffectOutput",
]
