"""ONNX export of the affect models (EMMA, CoTEX, DAN), checked against torch with ONNX Runtime; int8 quantisation.

`affect-hf export onnx --model DIR --output DIR` writes a folder that `--backend onnx` runs (`affect_hf.models`, where
every backend is loaded: this module only writes):
`model.onnx` (dynamic batch), optionally `model_int8.onnx`, the model's `config.json` and
`preprocessor_config.json` (labels, AU thresholds, crop size and normalisation), and `onnx_export.json`, the record
of where it came from (the source weights' sha256), of each file's sha256, of the parity check and of how many
decisions int8 changes. A file that no longer matches its record, or a folder whose weights are not the ones
exported, is refused with the reason.
"""

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data.transforms import AffectImageTransform, load_rgb_image
from .files import file_sha256, publish_folder, remove_stale_staging, staging_folder
from .hub import build_image_processor
from .modeling.pipeline_affect import affect_scores
from .models import (
    INT8_FILE,
    ONNX_FILE,
    RECORD_FILE,
    OnnxExportError,
    load_affect_model,
    onnx_session,
    weights_sha256,
)


logger = logging.getLogger(__name__)

MODEL_OUTPUTS = ("logits", "valence_arousal", "au_logits", "pooler_output", "cnn_logits")
QUANTIZATION_MODES = ("dynamic", "static")
OPSET = 18
# int8 runs the matrix products (the linear layers: 85% of EMMA's FLOPs); convolutions (12%) stay fp32: ONNX
# Runtime's integer convolution (ConvInteger) is slower than its fp32 one on CPU; quantising it halved int8's speed.
INT8_OPS = ["MatMul", "Gemm"]
# 7-bit weights: CPUs without VNNI (AVX2 only, e.g. AMD Zen 2-3) multiply uint8 x int8 in pairs summed into int16,
# which saturates with full-range weights. Measured on such a CPU (the tests' tiny EMMA, 96 faces): 8-bit weights
# changed 5.2% of expression and 5.1% of AU decisions, 7-bit ones 0% and 1.0%. A file exported here may run anywhere.
REDUCE_RANGE = True
# fp32 parity: ONNX Runtime fuses and reorders float operations, so outputs differ from torch by rounding only.
PARITY_TOLERANCE = 1e-4


class _OutputsAsTuple(nn.Module):
    """The model's inference outputs as a tuple of named tensors (what an ONNX graph returns)."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(pixel_values=pixel_values)
        return tuple(getattr(outputs, name) for name in self.names)


def output_names(model: nn.Module) -> tuple[str, ...]:
    """The outputs a model gives at inference (EMMA: its three answers; CoTEX and DAN: the logits), the pooled
    feature where it has one (a face's appearance, which the tracker reads), and EMMA's CNN scores: with the logits
    and the pooled feature, what a temporal model reads per frame (`modeling_temporal.frame_inputs`)."""
    size = model.config.image_size
    with torch.inference_mode():
        outputs = model(pixel_values=torch.zeros(1, 3, size, size, device=model.device))
    return tuple(name for name in MODEL_OUTPUTS if getattr(outputs, name, None) is not None)


def face_images(folder: str | os.PathLike, image_size: int, limit: int) -> torch.Tensor:
    """Up to `limit` face images of a folder (walked, sorted) as the model's normalised inputs (N x 3 x S x S)."""
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
    if not paths:
        raise FileNotFoundError(f"no face images (.jpg, .png, .bmp) under {folder}")
    transform = AffectImageTransform(image_size, train=False)
    return torch.stack([transform(load_rgb_image({"path": str(path)})) for path in paths[:limit]])


def _run(session, pixel_values: torch.Tensor, batch_size: int = 32) -> list[np.ndarray]:
    chunks = [
        session.run(None, {"pixel_values": pixel_values[start : start + batch_size].numpy()})
        for start in range(0, len(pixel_values), batch_size)
    ]
    return [np.concatenate(parts) for parts in zip(*chunks, strict=True)]


def decisions(outputs: dict[str, np.ndarray], config: Any) -> dict[str, np.ndarray]:
    """The discrete answers users read (`affect_scores`): the expression and, for EMMA, the AU decisions."""
    from transformers.utils import ModelOutput

    scores = affect_scores(ModelOutput(**{name: torch.from_numpy(value) for name, value in outputs.items()}), config)
    answers = {"expression": scores["expression_probabilities"].argmax(-1).numpy()}
    if "au_active" in scores:
        answers["action_units"] = scores["au_active"].numpy()
    return answers


def agreement(reference: dict[str, np.ndarray], other: dict[str, np.ndarray], config: Any) -> dict[str, float]:
    """How much `other` (e.g. int8) agrees with `reference` (fp32): unchanged decisions, and VA differences."""
    ours, theirs = decisions(reference, config), decisions(other, config)
    result = {
        "images": int(len(reference["logits"])),
        "expression_unchanged": float((ours["expression"] == theirs["expression"]).mean()),
    }
    if "action_units" in ours:
        result["au_decisions_unchanged"] = float((ours["action_units"] == theirs["action_units"]).mean())
    if "valence_arousal" in reference:
        difference = np.abs(reference["valence_arousal"] - other["valence_arousal"])
        result["valence_arousal_max_abs_difference"] = float(difference.max())
        result["valence_arousal_mean_abs_difference"] = float(difference.mean())
    return result


def export_onnx(
    model_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    quantize: str | None = None,
    calibration_dir: str | os.PathLike | None = None,
    validation_dir: str | os.PathLike | None = None,
    max_images: int = 256,
    opset: int = OPSET,
) -> dict[str, Any]:
    """Export `model_dir` to ONNX in `output_dir` (written whole or not at all); returns the export record.

    Parity with torch is checked on random inputs and, when given, on real faces (`validation_dir`, a folder of
    face images, else `calibration_dir`); a difference beyond `PARITY_TOLERANCE` fails the export. `quantize`
    adds `model_int8.onnx`: "dynamic" (int8 weights, activations quantised per batch: no data needed) or
    "static" (activation ranges calibrated on `calibration_dir`). With `validation_dir`, the record says how many
    expression and AU decisions int8 changes against fp32 on those faces.
    """
    if quantize not in (None, *QUANTIZATION_MODES):
        raise ValueError(f"--quantize must be one of {', '.join(QUANTIZATION_MODES)}, got {quantize!r}")
    if quantize == "static" and calibration_dir is None:
        raise ValueError("static quantisation needs --calibration_dir: a folder of face images")
    model = load_affect_model(model_dir, device="cpu")
    config = model.config
    names = output_names(model)
    size = config.image_size
    real = None
    for folder in (validation_dir, calibration_dir):
        if folder is not None:
            real = face_images(folder, size, max_images)
            break

    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(output_dir.parent, output_dir.name)
    staging = staging_folder(output_dir)
    try:
        example = torch.randn(2, 3, size, size)
        torch.onnx.export(
            _OutputsAsTuple(model, names).eval(), (example,), str(staging / ONNX_FILE), input_names=["pixel_values"],
            output_names=list(names), dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch", min=1)}},
            dynamo=True, opset_version=opset, external_data=False, verbose=False,
        )  # fmt: skip
        session = onnx_session(staging / ONNX_FILE)
        generator = torch.Generator().manual_seed(0)
        checks = {"random batch of 1": torch.randn(1, 3, size, size, generator=generator),
                  "random batch of 5": torch.randn(5, 3, size, size, generator=generator)}  # fmt: skip
        if real is not None:
            checks[f"{len(real)} real faces"] = real
        parity = {}
        for label, pixel_values in checks.items():
            with torch.inference_mode():
                expected = _OutputsAsTuple(model, names)(pixel_values)
            got = _run(session, pixel_values)
            parity[label] = {
                name: float(np.abs(ours - theirs.numpy()).max())
                for name, ours, theirs in zip(names, got, expected, strict=True)
            }
            worst = max(parity[label].values())
            scale = max(float(tensor.abs().max()) for tensor in expected)
            if worst > PARITY_TOLERANCE * max(1.0, scale):
                raise OnnxExportError(f"ONNX Runtime differs from torch by {worst:.3g} on {label}: {parity[label]}")

        record: dict[str, Any] = {
            "source": str(model_dir),
            "source_weights_sha256": weights_sha256(model_dir),
            "model_type": config.model_type,
            "image_size": size,
            "outputs": list(names),
            "opset": opset,
            "files": {ONNX_FILE: file_sha256(staging / ONNX_FILE)},
            "parity_max_abs_difference": parity,
            "torch": torch.__version__,
        }
        if quantize is not None:
            _quantize(staging / ONNX_FILE, staging / INT8_FILE, quantize, calibration_dir, size, max_images)
            record["files"][INT8_FILE] = file_sha256(staging / INT8_FILE)
            record["quantization"] = {
                "mode": quantize,
                "calibration_dir": str(calibration_dir) if calibration_dir else None,
                "weight_bits": 7 if REDUCE_RANGE else 8,
            }
            if real is not None:
                fp32 = dict(zip(names, _run(session, real), strict=True))
                int8 = dict(zip(names, _run(onnx_session(staging / INT8_FILE), real), strict=True))
                record["int8_agreement_with_fp32"] = agreement(fp32, int8, config)
        config.save_pretrained(staging)
        build_image_processor(size).save_pretrained(staging)
        (staging / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        publish_folder(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return record


def _quantize(source: Path, target: Path, mode: str, calibration_dir, image_size: int, max_images: int) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = target.with_name("prepared.onnx")
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    try:
        if mode == "dynamic":
            quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8, per_channel=True,
                             reduce_range=REDUCE_RANGE, op_types_to_quantize=INT8_OPS)  # fmt: skip
        else:
            faces = face_images(calibration_dir, image_size, max_images).numpy()

            class Faces(CalibrationDataReader):
                def __init__(self):
                    self.batches = iter([faces[i : i + 8] for i in range(0, len(faces), 8)])

                def get_next(self):
                    batch = next(self.batches, None)
                    return None if batch is None else {"pixel_values": batch}

            quantize_static(str(prepared), str(target), Faces(), per_channel=True, reduce_range=REDUCE_RANGE,
                            op_types_to_quantize=INT8_OPS, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8)  # fmt: skip
    finally:
        prepared.unlink(missing_ok=True)


__all__ = ["INT8_OPS", "PARITY_TOLERANCE", "QUANTIZATION_MODES", "agreement", "export_onnx"]
