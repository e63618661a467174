"""affect-hf: facial affect analysis (valence/arousal, expressions, action units) on the Hugging Face stack.

- `affect_hf.analyze(inputs, model=...)`: every face of pictures, folders and videos as a pandas DataFrame (one row
  per frame x face: the table `affect-hf predict` writes); `iter_analyze` gives it batch by batch;
  `affect_hf.dataset_rows(dataset)` makes a `datasets` dataset's Image or Video column such inputs.
- `affect_hf.pipeline(model)`: a loaded analyzer; `analyzer(picture)` gives one dict per face.
- `affect_hf.load_affect_model(name, backend=..., device=...)`: the one way in to EMMA, CoTEX and DAN.

Importing the package registers the model classes with transformers' Auto factories, so that
`AutoModel.from_pretrained(folder)` works without `trust_remote_code` where this package is installed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .modeling import (
    CotexConfig,
    CotexForImageClassification,
    DanConfig,
    DanForImageClassification,
    EmmaConfig,
    EmmaForAffectAnalysis,
    MaeViTModel,
    TemporalAffectConfig,
    TemporalAffectModel,
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
# The sequence model over a face's frames reads features, not pixels: AutoModel only.
AutoConfig.register(TemporalAffectConfig.model_type, TemporalAffectConfig, exist_ok=True)
AutoModel.register(TemporalAffectConfig, TemporalAffectModel, exist_ok=True)

# These load models through the registrations above.
from .inference import FaceResult, analyze, dataset_rows, iter_analyze, pipeline  # noqa: E402
from .models import load_affect_model, resolve_device  # noqa: E402


__all__ = [
    "CotexConfig",
    "CotexForImageClassification",
    "DanConfig",
    "DanForImageClassification",
    "EmmaConfig",
    "EmmaForAffectAnalysis",
    "FaceResult",
    "MaeViTModel",
    "TemporalAffectConfig",
    "TemporalAffectModel",
    "__version__",
    "analyze",
    "dataset_rows",
    "iter_analyze",
    "load_affect_model",
    "pipeline",
    "resolve_device",
]
