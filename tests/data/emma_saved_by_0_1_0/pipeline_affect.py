"""The "affect-analysis" pipeline that travels with every EMMA folder (torch and transformers only).

`pipeline(model=folder_or_hub_id, trust_remote_code=True)` builds it from the folder's `custom_pipelines` entry.
It takes face images (path, URL, PIL image or array; one or a list) that are already cropped, and returns per
image the valence, arousal, the expression scores and the action units with their decisions at the model's
thresholds. Finding and aligning faces in whole pictures is the installed package's `affect_hf.pipeline`.
"""

from typing import Any

import torch
from transformers import AutoModel, Pipeline
from transformers.image_transforms import to_pil_image
from transformers.image_utils import load_image
from transformers.pipelines import PIPELINE_REGISTRY


TASK = "affect-analysis"


def affect_scores(outputs: Any, config: Any) -> dict[str, torch.Tensor]:
    """A batch of model outputs as the quantities users read; the one place they are derived.

    `valence_arousal` (B x 2) as regressed, `expression_probabilities` (softmax, B x classes), and for a model with
    AU outputs `au_probabilities` (sigmoid, B x AUs) and `au_active` (probability >= `config.au_thresholds`).
    """
    scores = {"expression_probabilities": outputs.logits.float().softmax(-1)}
    if getattr(outputs, "valence_arousal", None) is not None:
        scores["valence_arousal"] = outputs.valence_arousal.float()
    if getattr(outputs, "au_logits", None) is not None:
        scores["au_probabilities"] = outputs.au_logits.float().sigmoid()
    return with_decisions(scores, config)


def with_decisions(scores: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """`scores` plus `au_active`: each AU's probability >= its threshold in `config.au_thresholds`."""
    if "au_probabilities" in scores:
        probabilities = scores["au_probabilities"]
        thresholds = torch.tensor(config.au_thresholds, device=probabilities.device)
        scores = {**scores, "au_active": probabilities >= thresholds}
    return scores


def describe(scores: dict[str, torch.Tensor], index: int, config: Any) -> dict[str, Any]:
    """Image `index` of `affect_scores(...)` as plain Python: the pipeline's result for one face."""
    probabilities = scores["expression_probabilities"][index].tolist()
    labels = [config.id2label[i] for i in range(len(probabilities))]
    result: dict[str, Any] = {}
    if "valence_arousal" in scores:
        result["valence"], result["arousal"] = scores["valence_arousal"][index].tolist()
    result["expression"] = labels[max(range(len(probabilities)), key=probabilities.__getitem__)]
    result["expression_scores"] = dict(zip(labels, probabilities, strict=True))
    if "au_probabilities" in scores:
        result["au_probabilities"] = dict(zip(config.au_names, scores["au_probabilities"][index].tolist(), strict=True))
        result["au_active"] = dict(zip(config.au_names, scores["au_active"][index].tolist(), strict=True))
    return result


class AffectAnalysisPipeline(Pipeline):
    """Face crops -> {valence, arousal, expression, expression_scores, au_probabilities, au_active}."""

    _load_processor = False
    _load_image_processor = True
    _load_feature_extractor = False
    _load_tokenizer = False

    def _sanitize_parameters(self, timeout: float | None = None, **kwargs):
        return ({"timeout": timeout} if timeout is not None else {}), {}, {}

    def preprocess(self, image, timeout: float | None = None):
        if hasattr(image, "shape"):  # an array: load_image takes paths, URLs and PIL images
            image = to_pil_image(image)
        inputs = self.image_processor(images=load_image(image, timeout=timeout), return_tensors="pt")
        return inputs.to(self.dtype)

    def _forward(self, model_inputs):
        return affect_scores(self.model(**model_inputs), self.model.config)

    def postprocess(self, model_outputs):
        return describe(model_outputs, 0, self.model.config)


def custom_pipeline_entry() -> dict[str, Any]:
    """The `config.custom_pipelines` entry that makes a saved folder build this pipeline."""
    return {TASK: {"impl": f"{__name__.split('.')[-1]}.{AffectAnalysisPipeline.__name__}", "pt": ["AutoModel"],
                   "type": "image"}}  # fmt: skip


if TASK not in PIPELINE_REGISTRY.get_supported_tasks():  # a remote copy of this file need not register twice
    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=AffectAnalysisPipeline, pt_model=AutoModel, type="image")
