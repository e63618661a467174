"""affect-hf: facial affect analysis (valence/arousal, expressions, action units) on the Hugging Face stack.

Importing the package registers the model classes with transformers' Auto factories, so that
`AutoModel.from_pretrained(folder)` works without `trust_remote_code` where this package is installed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from modeling import (
    CotexConfig,
    CotexForImageClassification,
    DanConfig,
    DanForImageClassification,
    EmmaConfig,
    EmmaForAffectAnalysis,
    MaeViTModel,
)


__version__ = "0.1.0"

_MODEL_FAMILIES = (
    (EmmaConfig, EmmaForAffectAnalysis),
    (CotexConfig, CotexForImageClassification),
    (DanConfig, DanForImageClassification),
)
for _config_class, _model_class in _MODEL_FAMILIES:
    AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
    AutoModel.register(_config_class, _model_class, exist_ok=True)
    AutoModelForImageClassification.register(_config_class, _model_class, exist_ok=True)

from .inference.analysis import pipeline  # noqa: E402  (loads models through the registrations above)


__all__ = [
    "CotexConfig",
    "CotexForImageClassification",
    "DanConfig",
    "DanForImageClassification",
    "EmmaConfig",
    "EmmaForAffectAnalysis",
    "MaeViTModel",
    "__version__",
    "pipeline",
]
