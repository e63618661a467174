"""The one way in to an affect model: the device, and EMMA, CoTEX or DAN loaded from a folder or a Hub id, run by
torch or by ONNX Runtime (an `affect-hf export onnx` folder). Every tool (predict, the app, evaluate, predict-abaw,
export, the benchmark) loads its models here, so all of them take the same `--device` and `--backend`.

Both backends answer `model(pixel_values=...)` with the outputs by name (`logits`, and for EMMA `valence_arousal`
and `au_logits`) and carry `.config`, `.device` and `.dtype`, so the code that reads a model's answers
(`modeling.pipeline_affect.affect_scores`) does not know which one runs.
"""

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from safetensors import SafetensorError
from transformers import AutoConfig, AutoImageProcessor, AutoModel, PreTrainedConfig
from transformers.utils import ModelOutput

from .data.transforms import IMAGE_MEAN, IMAGE_STD
from .files import file_sha256


# The model types that give affect answers; a frame-level model maps a face crop to them. (A sequence model over a
# face's frames is another kind of input: it would be added here with the reader it needs.)
AFFECT_MODEL_TYPES = ("emma", "cotex", "dan")
# A sequence model over a face's frames, reading a frame-level EMMA's outputs (`load_frame_model` gives that EMMA).
TEMPORAL_MODEL_TYPE = "temporal_affect"
BACKENDS = ("torch", "onnx", "onnx-int8")
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
# The precisions an affect model runs inference in (`--dtype`); `auto` picks one per device (`resolve_dtype`).
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)

# An `affect-hf export onnx` folder: the fp32 graph, the int8 graph, and the record of both (see `affect_hf.export`).
ONNX_FILE, INT8_FILE, RECORD_FILE = "model.onnx", "model_int8.onnx", "onnx_export.json"
ONNX_SUBFOLDER = "onnx"

logger = logging.getLogger(__name__)


class NotAnAffectModelError(ValueError):
    """A folder or Hub id that holds some other kind of model (the type is named)."""


class OnnxExportError(ValueError):
    """An export whose outputs do not match torch, or an exported folder that does not match its record."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` is the first CUDA GPU when there is one, else the CPU; a device this machine lacks is refused, named.

    MPS is used only when asked for (`mps`): the detector's antialiased resizing is not checked there.
    """
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}: expected {DEVICE_CHOICES}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"device {name!r} is not available: {why} (torch {torch.__version__}); use cpu or auto")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"device {name!r} is not available: this machine has {count} CUDA GPU(s), cuda:0 on")
    elif resolved.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {name!r} is not available: MPS needs Apple silicon and a torch built with it")
    elif resolved.type != "cpu":
        raise ValueError(f"unsupported device {name!r}: expected {DEVICE_CHOICES}")
    return resolved


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: without them bf16 matmuls are emulated, about 3x slower than fp32 (measured)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """The precision a model runs in on `device`. `auto`: bf16 where the device computes it natively (CUDA GPUs
    from Ampere on, CPUs with AVX512-BF16 or AMX), fp16 on older CUDA GPUs, fp32 elsewhere (MPS included)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype}: expected one of {', '.join(DTYPE_CHOICES)}")
        return dtype
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}: expected one of {', '.join(DTYPE_CHOICES)}")
        return DTYPES[dtype]
    if device.type == "cuda":  # this GPU's own capability: Ampere (8.0) and later compute bf16
        return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` -> "bf16": the name `--dtype` takes."""
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"a model in {dtype} runs in none of the dtypes here: {', '.join(DTYPES)}")


def is_local_path(name_or_path: str | os.PathLike) -> bool:
    """Whether a model name means a local folder: it exists, or it cannot be a Hub id (`user/name`), e.g.
    `runs/emma/best_model`, `./model` or an absolute path. A missing local folder is then named as such."""
    name = str(name_or_path)
    if os.path.exists(name):
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def check_model_location(name_or_path: str | os.PathLike) -> str:
    """The name as a string; a local path that is not a folder fails here, before any Hub look-up."""
    name = str(name_or_path)
    if is_local_path(name) and not os.path.isdir(name):
        raise FileNotFoundError(f"model folder not found: {name}")
    return name


def load_affect_model(
    name_or_path: str | os.PathLike,
    backend: str = "torch",
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    **hub_options: Any,
):
    """An affect model (EMMA, CoTEX or DAN) ready for inference: eval mode, on `device`, in `dtype` (fp32, bf16,
    fp16, or auto: `resolve_dtype`).

    The config is read first, so a folder of another kind fails with its type named before any weight is read.
    `backend="onnx"` / `"onnx-int8"` runs an `affect-hf export onnx` folder with ONNX Runtime on the CPU: the folder
    given, or the `onnx/` folder inside a model folder, whose weights must then be the ones exported.
    It runs fp32 only. `hub_options` go to `from_pretrained` (`revision`, `token`, `trust_remote_code` ...).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend != "torch" and str(device) not in ("auto", "cpu"):
        raise ValueError(f"the {backend} backend runs on the CPU, not on {str(device)!r}: use device cpu or auto")
    target = resolve_device(device)  # an absent device or dtype fails before anything is read
    precision = resolve_dtype(dtype, target)
    if backend != "torch" and dtype not in ("auto", "fp32", torch.float32):
        raise ValueError(f"the {backend} backend runs fp32, not {dtype}: use dtype fp32 or auto")
    name = check_model_location(name_or_path)
    try:
        config = AutoConfig.from_pretrained(name, **hub_options)
    except OSError as error:
        if is_local_path(name):
            raise
        # A bare name that is no folder here is taken for a Hub id: say so, whatever the Hub answered.
        raise OSError(f"{name} is no folder here, and as a Hub id it could not be loaded: {error}") from None
    check_affect_config(config, name)
    if config.model_type == TEMPORAL_MODEL_TYPE and backend != "torch":
        raise ValueError(f"{name} is a temporal model: it runs on torch (its frame model may run on {backend})")
    if backend == "torch":
        with readable_weights(name):
            return AutoModel.from_pretrained(name, dtype=precision, **hub_options).eval().to(target)
    if not os.path.isdir(name):
        raise ValueError(f"the {backend} backend runs a local `affect-hf export onnx` folder, not a Hub id ({name})")
    inside = Path(name) / ONNX_SUBFOLDER
    if inside.is_dir():
        return OnnxAffectModel(inside, int8=backend == "onnx-int8", source_model_dir=name)
    return OnnxAffectModel(name, int8=backend == "onnx-int8")


@contextmanager
def readable_weights(name: str | os.PathLike) -> Iterator[None]:
    """Loading a folder's weights: a damaged or incomplete weights file is named, as an `OSError` (safetensors'
    own error names neither the file nor what to do)."""
    try:
        yield
    except SafetensorError as error:
        raise OSError(
            f"the weights in {name} cannot be read ({error}): the file is damaged or incomplete; save or download "
            "the model again"
        ) from None


def check_affect_config(config: PreTrainedConfig, name: str) -> None:
    if config.model_type not in (*AFFECT_MODEL_TYPES, TEMPORAL_MODEL_TYPE):
        raise NotAnAffectModelError(
            f"{name} holds a {config.model_type!r} model, not an affect model "
            f"({', '.join((*AFFECT_MODEL_TYPES, TEMPORAL_MODEL_TYPE))})"
        )


def load_frame_model(
    temporal: Any, device: str | torch.device = "auto", frame_model: str | os.PathLike | None = None,
    strict: bool = False, **options: Any,
):  # fmt: skip
    """The frame-level EMMA a temporal model reads (`frame_model`, default the one its config names), loaded and
    checked by `check_frame_model`."""
    name = str(frame_model or temporal.config.frame_model)
    frame = load_affect_model(name, device=device, **options)
    check_frame_model(temporal.config, frame.config, name, strict)
    return frame


def check_frame_model(temporal: PreTrainedConfig, frame: PreTrainedConfig, name: str, strict: bool = False) -> None:
    """A frame model (config `frame`, at `name`) for a temporal model (config `temporal`): one whose feature width,
    score count or labels differ is refused; one whose weights are not those it was trained on is refused with
    `strict`, else warned about (a Hub id's weights are not hashed here)."""
    width = frame.vit_config.hidden_size if frame.model_type == "emma" else None
    scores = frame.num_labels + getattr(frame, "num_action_units", 0)
    if getattr(frame, "use_cnn_scores", False):
        scores += frame.cnn_config.num_labels
    if width != temporal.feature_size or scores != temporal.num_scores:
        raise ValueError(
            f"the temporal model reads {temporal.feature_size}-wide features and {temporal.num_scores} scores; the "
            f"frame model {name} gives {width} and {scores}: use the EMMA it was trained on ({temporal.frame_model})"
        )
    labels = [frame.id2label[i] for i in range(frame.num_labels)]
    if labels != [temporal.id2label[i] for i in range(temporal.num_labels)] or list(frame.au_names) != list(
        temporal.au_names
    ):
        raise ValueError(f"the frame model {name} names its expressions or AUs otherwise than the temporal model")
    sha = weights_sha256(name)
    if temporal.frame_model_sha256 and sha and sha != temporal.frame_model_sha256:
        message = (f"the frame model {name} has other weights (sha256 {sha[:12]}...) than the one the temporal "
                   f"model was trained on ({temporal.frame_model_sha256[:12]}...)")  # fmt: skip
        if strict:
            raise ValueError(message + "; without --strict it is used all the same")
        logger.warning("%s: its answers may be off", message)


def load_image_normalisation(
    name_or_path: str | os.PathLike, **hub_options: Any
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std of the folder's saved image processor; the training transform's for a folder without one."""
    try:
        processor = AutoImageProcessor.from_pretrained(str(name_or_path), **hub_options)
    except OSError:  # no preprocessor_config.json (e.g. a converted checkpoint saved by hand)
        return IMAGE_MEAN, IMAGE_STD
    return tuple(processor.image_mean), tuple(processor.image_std)


def weights_sha256(model_dir: str | os.PathLike) -> str | None:
    """The sha256 of a model folder's weights file, None for a Hub id or a folder without one."""
    path = Path(model_dir) / "model.safetensors"
    return file_sha256(path) if path.is_file() else None


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime session on the CPU (`threads`: intra-op threads, default ONNX Runtime's)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError("the onnx backends need ONNX Runtime: pip install 'affect-hf[onnx]'") from None

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxAffectModel:
    """An exported folder run by ONNX Runtime, in the shape of a transformers model: `model(pixel_values=...)`
    returns the outputs by name; `.config`, `.device` and `.dtype` are there.

    The folder's record (`onnx_export.json`) is checked first: a graph whose sha256 changed, a config that does not
    describe it, or (with `source_model_dir`) weights other than the ones exported are refused with the reason.
    """

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(
        self, folder: str | os.PathLike, int8: bool = False, source_model_dir: str | os.PathLike | None = None
    ):
        folder = Path(folder)
        record_path = folder / RECORD_FILE
        if not record_path.is_file():
            raise OnnxExportError(f"{folder} is not an ONNX export: no {RECORD_FILE} (run affect-hf export onnx)")
        record = json.loads(record_path.read_text(encoding="utf-8"))
        file_name = INT8_FILE if int8 else ONNX_FILE
        path = folder / file_name
        if file_name not in record["files"] or not path.is_file():
            raise OnnxExportError(f"{path} does not exist: export with --quantize for the int8 model")
        if file_sha256(path) != record["files"][file_name]:
            raise OnnxExportError(f"{path} is not the file this export recorded (its sha256 changed): export again")
        if source_model_dir is not None:
            weights = weights_sha256(source_model_dir)
            if weights is not None and weights != record["source_weights_sha256"]:
                raise OnnxExportError(
                    f"{folder} was exported from other weights than {source_model_dir}'s (sha256 "
                    f"{record['source_weights_sha256']} vs {weights}): export again"
                )
        self.config = AutoConfig.from_pretrained(folder)
        if self.config.image_size != record["image_size"] or self.config.model_type != record["model_type"]:
            raise OnnxExportError(f"{folder}/config.json does not describe the exported model ({record_path})")
        self.session = onnx_session(path)
        self.names = tuple(output.name for output in self.session.get_outputs())
        if list(self.names) != record["outputs"]:
            raise OnnxExportError(f"{path} returns {self.names}, the record says {record['outputs']}")
        self.folder, self.record, self.file_name = folder, record, file_name

    def eval(self) -> "OnnxAffectModel":
        return self

    def __call__(self, pixel_values: torch.Tensor) -> ModelOutput:
        values = self.session.run(None, {"pixel_values": pixel_values.detach().float().cpu().numpy()})
        return ModelOutput(**{name: torch.from_numpy(value) for name, value in zip(self.names, values, strict=True)})


__all__ = [
    "AFFECT_MODEL_TYPES",
    "BACKENDS",
    "DTYPES",
    "DTYPE_CHOICES",
    "NotAnAffectModelError",
    "OnnxAffectModel",
    "OnnxExportError",
    "check_frame_model",
    "check_model_location",
    "cpu_has_native_bf16",
    "dtype_name",
    "is_local_path",
    "load_affect_model",
    "load_frame_model",
    "load_image_normalisation",
    "onnx_session",
    "readable_weights",
    "resolve_device",
    "resolve_dtype",
    "weights_sha256",
]
