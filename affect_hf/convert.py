"""The paper's released checkpoints and facebookresearch/mae's -> this package's classes and Hub-ready folders.

Sources (raw PyTorch pickles with timm / torchvision names), detected from their keys or named by `kind`:

- `mae-pretraining` -> `ViTMAEForPreTraining`: `{"model": cls_token, pos_embed, patch_embed.*, blocks.N.*, norm.*,
  decoder_*, mask_token}` (facebookresearch/mae; the authors' `mae_norm.pth`);
- `vit` -> `MaeViTModel` (the backbone): a fine-tuned MAE / timm ViT, `blocks.N.*` without a decoder, maybe
  `fc_norm.*` (mean pooling) and `head.*`;
- `dan` -> `DanForImageClassification`: `{"model_state_dict": features.0 (conv1), features.1 (bn1), features.4-7
  (layer1-4), cat_head{i}.*, fc.*, bn.*}`;
- `emma` -> `EmmaForAffectAnalysis`: `{"epoch", "model": vit.* (timm, vit.head.0/2), cnn.* (the DAN above),
  va_head.0/2}`;
- `cotex` -> `CotexForImageClassification`: `{"epoch", "args", ..., "state_dicts": [one per view: vit.* with a
  6-class vit.head]}`.

Files are read with `torch.load(weights_only=True)` only (numpy scalars and dtypes, which the authors' files hold,
are allowed as data); a file that needs more is refused with the reason and never unpickled. Every source tensor
must land somewhere and every model tensor must be filled, with the same shape: unknown, missing and mismatched
names fail, listed. `allow_missing` patterns (fnmatch) name model tensors the user accepts to leave initialised.
What is dropped on purpose (a fine-tuned ViT's classifier, DAN's never-saved class centres) is reported and
written on the card. Position embeddings of another grid are interpolated (bicubic, class token kept).
"""

import fnmatch
import io
import logging
import math
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, ViTMAEConfig, ViTMAEForPreTraining

from .files import file_sha256
from .hub import render_model_card, save_model_folder
from .labels import AFFECTNET_EXPRESSIONS, LSD_EXPRESSIONS, NUM_ACTION_UNITS, NUM_EXPRESSIONS
from .model_cards import COTEX_TEMPLATE, DAN_TEMPLATE, EMMA_TEMPLATE, MAE_TEMPLATE
from .modeling import (
    CotexConfig,
    CotexForImageClassification,
    DanConfig,
    DanForImageClassification,
    EmmaConfig,
    EmmaForAffectAnalysis,
    MaeViTModel,
)


logger = logging.getLogger(__name__)

CHECKPOINT_KINDS = ("mae-pretraining", "vit", "dan", "emma", "cotex")
# timm ViTs do not store their head count; these are the MAE / ViT family's (B, L, H).
ATTENTION_HEADS_BY_WIDTH = {768: 12, 1024: 16, 1280: 16}
MAE_DECODER_HEADS = 16
# timm's and MAE's LayerNorm epsilon (transformers' ViTMAEConfig defaults to 1e-12).
TIMM_LAYER_NORM_EPS = 1e-6
# numpy data that the authors' pickles hold (accuracies, F1 arrays) is read as data, never code. numpy's own
# unpickling would trust the pickle's dtype description (a forged one makes an array of object pointers from raw
# bytes), so stand-ins rebuild arrays and scalars of plain number types only, from their raw bytes.
_NUMBER_KINDS = "biufc"  # bool, signed and unsigned integers, floats, complex


class _DtypeStandIn:
    """A numpy dtype as a pickle describes it (`numpy.dtype(name, align, copy)`, then its state)."""

    def __init__(self, name: str, *args):
        self.name, self.state = str(name), None

    def __setstate__(self, state: tuple) -> None:
        self.state = state

    def build(self) -> np.dtype:
        dtype = np.dtype(self.name) if self.name[:1] in "<>=|" or self.name.isalnum() else None
        if dtype is None or dtype.kind not in _NUMBER_KINDS:
            raise NeedsCodeError(f"numpy data of type {self.name!r} (only numbers are read)")
        if self.state is not None:
            if len(self.state) < 5 or any(part is not None for part in self.state[2:5]):  # subarrays, fields
                raise NeedsCodeError(f"a structured numpy type {self.name!r} (only numbers are read)")
            if self.state[1] in "<>":
                dtype = dtype.newbyteorder(self.state[1])
        return dtype


class _ArrayStandIn:
    """A numpy array being unpickled (`_reconstruct(ndarray, ...)`, then its state): rebuilt from raw bytes."""

    def __init__(self, *args):
        self.array = None

    def __setstate__(self, state: tuple) -> None:
        _, shape, dtype, fortran, raw = state[-5:] if len(state) >= 5 else (None, *state)
        if not isinstance(dtype, _DtypeStandIn) or not isinstance(raw, (bytes, bytearray)):
            raise NeedsCodeError("numpy data that is not an array of numbers")
        array = np.frombuffer(raw, dtype=dtype.build())
        self.array = array.reshape(tuple(shape), order="F" if fortran else "C").copy()


def _array_stand_in(kind, shape, typecode) -> _ArrayStandIn:
    return _ArrayStandIn()


def _scalar_stand_in(dtype: _DtypeStandIn, data: bytes = b"") -> Any:
    if not isinstance(dtype, _DtypeStandIn) or not isinstance(data, (bytes, bytearray)):
        raise NeedsCodeError("numpy data that is not a number")
    return np.frombuffer(data, dtype=dtype.build())[0].copy()


# What a pickle may name for numpy data, each mapped onto its stand-in. Files written with numpy 1 name the
# multiarray module `numpy.core`, with numpy 2 `numpy._core`; numpy 2 may name a dtype by its class.
_NUMPY_STAND_INS = {
    "numpy.dtype": _DtypeStandIn,
    "numpy.ndarray": _ArrayStandIn,
    **{f"numpy.dtypes.{type(np.dtype(name)).__name__}": _DtypeStandIn
       for name in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
                    "float32", "float64", "complex64", "complex128")},
    **{f"{module}.{name}": stand_in for module in ("numpy.core.multiarray", "numpy._core.multiarray")
       for name, stand_in in (("_reconstruct", _array_stand_in), ("scalar", _scalar_stand_in))},
}  # fmt: skip
_SAFE_NUMPY_GLOBALS = [_DtypeStandIn, _ArrayStandIn, *((stand_in, name) for name, stand_in in _NUMPY_STAND_INS.items())]


def _with_arrays(value: Any) -> Any:
    """The loaded data with every stand-in replaced by the numpy value it holds."""
    if isinstance(value, _ArrayStandIn):
        return value.array
    if isinstance(value, _DtypeStandIn):
        return value.build()
    if isinstance(value, dict):
        return type(value)((key, _with_arrays(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_with_arrays(item) for item in value)
    return value


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model it is converted into (names listed)."""


@dataclass
class Conversion:
    """What a conversion did: the model, where its weights came from, and what was left out on purpose."""

    model: PreTrainedModel
    kind: str
    source: str
    sha256: str
    dropped: dict[str, tuple[int, ...]] = field(default_factory=dict)
    left_initialised: list[str] = field(default_factory=list)
    interpolated: str | None = None

    def record(self) -> dict[str, Any]:
        return {
            "source": os.path.basename(self.source),
            "sha256": self.sha256,
            "kind": self.kind,
            "dropped_from_source": {name: list(shape) for name, shape in self.dropped.items()},
            "left_initialised": self.left_initialised,
            "position_embeddings": self.interpolated or "as in the source",
        }


# ----------------------------------------------------------------------------------------------------- loading


class _DataOnlyUnpickler(pickle.Unpickler):
    """A plain `pickle.dump` file of tensors, numpy arrays and containers, read without running any code: the only
    callables a pickle may name are the ones that rebuild such data, and a tensor's bytes go through
    `torch.load(weights_only=True)`. Any other name refuses the file (`NeedsCodeError`)."""

    DATA = {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
            ("torch._utils", "_rebuild_parameter")}  # fmt: skip

    def find_class(self, module: str, name: str):
        if "." in name:  # a dotted name walks attributes: anything can be reached that way
            raise NeedsCodeError(f"{module}.{name}")
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return lambda data: torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if f"{module}.{name}" in _NUMPY_STAND_INS:
            return _NUMPY_STAND_INS[f"{module}.{name}"]
        if (module, name) in self.DATA:
            return super().find_class(module, name)
        raise NeedsCodeError(f"{module}.{name}")


class NeedsCodeError(pickle.UnpicklingError):
    """A pickle that names code to run (the name in the message): refused, never run."""


def load_checkpoint(path: str | os.PathLike) -> Any:
    """Tensors, containers, numbers, strings and numpy data, never code: `torch.load(weights_only=True)` for files
    `torch.save` wrote, a data-only unpickler for plain `pickle.dump` files.

    Three answers, each naming the file: the data; "needs code to load: refused, never run" (a pickle that names a
    class or function beyond data); "not a checkpoint" (another format, or a damaged file).
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise CheckpointError(f"{path} cannot be read: {error.strerror or error}") from None
    try:
        if head[:1] == b"\x80" and head[1:2] in (b"\x04", b"\x05"):  # pickle protocol 4-5: `pickle.dump`
            with open(path, "rb") as handle:
                return _with_arrays(_DataOnlyUnpickler(handle).load())
        with torch.serialization.safe_globals(_SAFE_NUMPY_GLOBALS):
            return _with_arrays(torch.load(path, map_location="cpu", weights_only=True))
    except NeedsCodeError as error:
        raise CheckpointError(
            f"{path} needs code to load ({error}): refused, never run. {_NEEDS_CODE_ADVICE}"
        ) from None
    except pickle.UnpicklingError as error:
        reason = _torch_reason(error)
        needed = re.search(r"GLOBAL ([\w.]+)", str(error))
        if needed:
            raise CheckpointError(
                f"{path} needs code to load ({needed.group(1)}): refused, never run. {_NEEDS_CODE_ADVICE}"
            ) from None
        raise CheckpointError(f"{path} is not a checkpoint (another format, or a damaged file): {reason}") from None
    except (RuntimeError, KeyError, EOFError, ValueError, OSError, IndexError, TypeError) as error:
        raise CheckpointError(
            f"{path} is not a checkpoint (another format, or a damaged file): {_torch_reason(error)}"
        ) from None


# Never "load it with weights_only=False": for a hostile file that runs its code.
_NEEDS_CODE_ADVICE = (
    "If you trust its source, re-save its state dict (torch.save(model.state_dict(), path)) where it was made."
)


# torch wraps its unpickling errors in advice, one piece of it dangerous ("weights_only=False"): never passed on.
_TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation", "(1)", "(2)")


def _torch_reason(error: BaseException) -> str:
    """What went wrong, without torch's advice around it."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "Unsupported" in line:
            return line.split("WeightsUnpickler error:")[-1].strip() or line
    reasons = [line for line in lines if not line.startswith(_TORCH_ADVICE)]
    return reasons[0] if reasons else type(error).__name__


def detect_kind(checkpoint: Any) -> str:
    """The kind of a loaded checkpoint, from its keys."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dicts"), (list, tuple)):
        return "cotex"
    if isinstance(checkpoint, dict) and "model_state_dict" in checkpoint:
        return "dan"
    state = _state_dict(checkpoint)
    if any(key.startswith("cnn.") for key in state) and any(key.startswith("va_head.") for key in state):
        return "emma"
    if any(key.startswith("features.0.") for key in state) and any(key.startswith("cat_head") for key in state):
        return "dan"
    if "cls_token" in state and any(key.startswith("blocks.") for key in state):
        return "mae-pretraining" if any(key.startswith("decoder_") for key in state) else "vit"
    sample = ", ".join(sorted(state)[:6])
    raise CheckpointError(f"cannot tell what this checkpoint holds (keys such as {sample}); pass kind=")


def _state_dict(checkpoint: Any) -> dict[str, torch.Tensor]:
    if isinstance(checkpoint, dict):
        for key in ("model", "model_state_dict", "state_dict"):
            if isinstance(checkpoint.get(key), dict):
                return checkpoint[key]
        if checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
            return checkpoint
    raise CheckpointError("the checkpoint holds no state dict (looked for 'model', 'model_state_dict', 'state_dict')")


# ----------------------------------------------------------------------------------------------------- ViT (timm)

_TIMM_BLOCK = {
    "norm1": "layernorm_before",
    "attn.proj": "attention.o_proj",
    "norm2": "layernorm_after",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def _timm_blocks(state: dict, prefix: str) -> int:
    layers = {int(m.group(1)) for key in state if (m := re.match(rf"^{re.escape(prefix)}(\d+)\.", key))}
    return max(layers) + 1 if layers else 0


def _map_timm_blocks(state: dict, source: str, target: str, out: dict, used: set) -> None:
    """timm `blocks.N` (qkv fused) -> ViTMAE `layers.N` (q, k, v apart), for N in the source."""
    for layer in range(_timm_blocks(state, source)):
        block = f"{source}{layer}."
        for suffix in ("weight", "bias"):
            qkv = block + f"attn.qkv.{suffix}"
            if qkv in state:
                for name, part in zip(("q_proj", "k_proj", "v_proj"), state[qkv].chunk(3, dim=0), strict=True):
                    out[f"{target}{layer}.attention.{name}.{suffix}"] = part.clone()
                used.add(qkv)
            for timm_name, ours in _TIMM_BLOCK.items():
                key = block + f"{timm_name}.{suffix}"
                if key in state:
                    out[f"{target}{layer}.{ours}.{suffix}"] = state[key]
                    used.add(key)


def _interpolate_positions(positions: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, 1 + g*g, D) position embeddings resized to a `grid` x `grid` patch grid (bicubic; class token kept)."""
    old_grid = int(math.isqrt(positions.shape[1] - 1))
    if old_grid == grid:
        return positions
    cls, patches = positions[:, :1], positions[:, 1:]
    patches = patches.reshape(1, old_grid, old_grid, -1).permute(0, 3, 1, 2).float()
    patches = torch.nn.functional.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(positions.dtype)
    return torch.cat([cls, patches], dim=1)


def _map_timm_encoder(state: dict, source: str, target: str, out: dict, used: set, grid: int) -> None:
    """A timm ViT encoder under `source` (e.g. "" or "vit.") -> a ViTMAE/MaeViTModel encoder under `target`."""
    names = {
        "cls_token": "embeddings.cls_token",
        "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
        "norm.weight": "layernorm.weight",
        "norm.bias": "layernorm.bias",
        "fc_norm.weight": "fc_norm.weight",
        "fc_norm.bias": "fc_norm.bias",
    }
    for timm_name, ours in names.items():
        if source + timm_name in state:
            out[target + ours] = state[source + timm_name]
            used.add(source + timm_name)
    if source + "pos_embed" in state:
        out[target + "embeddings.position_embeddings"] = _interpolate_positions(state[source + "pos_embed"], grid)
        used.add(source + "pos_embed")
    _map_timm_blocks(state, source + "blocks.", target + "layers.", out, used)


def timm_vit_config(state: dict, source: str = "", image_size: int | None = None, **overrides) -> ViTMAEConfig:
    """The ViTMAE config of a timm ViT's weights (the head count is not stored: MAE's, unless overridden)."""
    hidden = state[source + "cls_token"].shape[-1]
    patch_weight = state[source + "patch_embed.proj.weight"]
    grid = int(math.isqrt(state[source + "pos_embed"].shape[1] - 1))
    fields = dict(
        hidden_size=hidden,
        num_hidden_layers=_timm_blocks(state, source + "blocks."),
        num_attention_heads=ATTENTION_HEADS_BY_WIDTH.get(hidden, max(1, hidden // 64)),
        intermediate_size=state[source + "blocks.0.mlp.fc1.weight"].shape[0],
        patch_size=patch_weight.shape[-1],
        num_channels=patch_weight.shape[1],
        image_size=image_size or grid * patch_weight.shape[-1],
        qkv_bias=source + "blocks.0.attn.qkv.bias" in state,
        layer_norm_eps=TIMM_LAYER_NORM_EPS,
        mask_ratio=0.0,
    )
    if source + "decoder_embed.weight" in state:
        fields.update(
            decoder_hidden_size=state[source + "decoder_embed.weight"].shape[0],
            decoder_num_hidden_layers=_timm_blocks(state, source + "decoder_blocks."),
            decoder_num_attention_heads=MAE_DECODER_HEADS,
            decoder_intermediate_size=state[source + "decoder_blocks.0.mlp.fc1.weight"].shape[0],
            mask_ratio=0.75,
            norm_pix_loss=True,
        )
    fields.update({key: value for key, value in overrides.items() if value is not None})
    return ViTMAEConfig(**fields)


# ------------------------------------------------------------------------------------------------ DAN (torchvision)


def _map_dan(state: dict, source: str, target: str, out: dict, used: set) -> None:
    """The authors' DAN (torchvision ResNet-18 under `features.*`, `cat_head{i}`) -> `DanForImageClassification`."""
    stems = {
        "features.0.": "resnet.embedder.embedder.convolution.",
        "features.1.": "resnet.embedder.embedder.normalization.",
    }
    block_parts = {
        "conv1.": "layer.0.convolution.",
        "bn1.": "layer.0.normalization.",
        "conv2.": "layer.1.convolution.",
        "bn2.": "layer.1.normalization.",
        "downsample.0.": "shortcut.convolution.",
        "downsample.1.": "shortcut.normalization.",
    }
    for key, value in state.items():
        if not key.startswith(source):
            continue
        name = key[len(source) :]
        mapped = None
        for stem, ours in stems.items():
            if name.startswith(stem):
                mapped = ours + name[len(stem) :]
        if match := re.match(r"^features\.([4-7])\.(\d+)\.(.*)$", name):
            stage, block, rest = int(match.group(1)) - 4, match.group(2), match.group(3)
            for part, ours in block_parts.items():
                if rest.startswith(part):
                    mapped = f"resnet.encoder.stages.{stage}.layers.{block}.{ours}{rest[len(part) :]}"
        elif match := re.match(r"^cat_head(\d+)\.(.*)$", name):
            mapped = f"heads.{match.group(1)}.{match.group(2)}"
        elif name.split(".")[0] in ("fc", "bn"):
            mapped = name
        if mapped is not None:
            out[target + mapped] = value
            used.add(key)


def dan_config(state: dict, source: str = "") -> DanConfig:
    """The DanConfig of the authors' DAN weights (widths, depths, heads and reductions read off the shapes)."""
    hidden_sizes = [state[f"{source}features.{4 + stage}.0.conv1.weight"].shape[0] for stage in range(4)]
    depths = [_timm_blocks(state, f"{source}features.{4 + stage}.") for stage in range(4)]
    channels = hidden_sizes[-1]
    num_heads = len({m.group(1) for key in state if (m := re.match(rf"^{re.escape(source)}cat_head(\d+)\.", key))})
    num_labels = state[source + "fc.weight"].shape[0]
    labels = dict(enumerate(AFFECTNET_EXPRESSIONS[:num_labels])) if num_labels <= 8 else None
    return DanConfig(
        embedding_size=state[source + "features.0.weight"].shape[0],
        num_channels=state[source + "features.0.weight"].shape[1],
        hidden_sizes=hidden_sizes,
        depths=depths,
        num_heads=num_heads,
        spatial_reduction=channels // state[source + "cat_head0.sa.conv1x1.0.weight"].shape[0],
        channel_reduction=channels // state[source + "cat_head0.ca.attention.0.weight"].shape[0],
        **({"id2label": labels} if labels else {"num_labels": num_labels}),
    )


# ------------------------------------------------------------------------------------------------------ the kinds


def _build(
    checkpoint: Any, kind: str, image_size: int | None, heads: int | None, decoder_heads: int | None
) -> tuple[PreTrainedModel, dict, set, dict, tuple[str, ...]]:
    """(model, converted state dict in the model's names, source keys used, source tensors by name, model tensors
    this source never holds)."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    if kind == "cotex":
        states = list(checkpoint["state_dicts"])
        sources = {f"state_dicts.{i}.{key}": value for i, state in enumerate(states) for key, value in state.items()}
        vit_config = timm_vit_config(states[0], "vit.", image_size, num_attention_heads=heads)
        options = checkpoint.get("args") or {}
        config = CotexConfig(
            vit_config=vit_config.to_dict(),
            num_views=len(states),
            id2label=dict(enumerate(LSD_EXPRESSIONS[: states[0]["vit.head.weight"].shape[0]])),
            **{
                name: options[key]
                for key, name in (("mask_rate", "mask_ratio"), ("lambda_JS", "js_weight"))
                if key in options
            },
        )
        grid = config.image_size // vit_config.patch_size
        for index, state in enumerate(states):
            view_used: set[str] = set()
            _map_timm_encoder(state, "vit.", f"views.{index}.", out, view_used, grid)
            for suffix in ("weight", "bias"):
                if f"vit.head.{suffix}" in state:
                    out[f"heads.{index}.{suffix}"] = state[f"vit.head.{suffix}"]
                    view_used.add(f"vit.head.{suffix}")
            used |= {f"state_dicts.{index}.{key}" for key in view_used}
        return CotexForImageClassification(config), out, used, sources, ()

    state = _state_dict(checkpoint)
    if kind == "mae-pretraining":
        config = timm_vit_config(
            state, "", image_size, num_attention_heads=heads, decoder_num_attention_heads=decoder_heads
        )
        grid = config.image_size // config.patch_size
        _map_timm_encoder(state, "", "vit.", out, used, grid)
        for name, ours in (("decoder_embed", "decoder.decoder_embed"), ("decoder_norm", "decoder.decoder_norm"),
                           ("decoder_pred", "decoder.decoder_pred")):  # fmt: skip
            for suffix in ("weight", "bias"):
                if f"{name}.{suffix}" in state:
                    out[f"{ours}.{suffix}"] = state[f"{name}.{suffix}"]
                    used.add(f"{name}.{suffix}")
        for name, ours in (("mask_token", "decoder.mask_token"), ("decoder_pos_embed", "decoder.decoder_pos_embed")):
            if name in state:
                value = state[name]
                out[ours] = _interpolate_positions(value, grid) if name == "decoder_pos_embed" else value
                used.add(name)
        _map_timm_blocks(state, "decoder_blocks.", "decoder.decoder_layers.", out, used)
        return ViTMAEForPreTraining(config), out, used, state, ()
    if kind == "vit":
        config = timm_vit_config(state, "", image_size, num_attention_heads=heads)
        pooling = "mean" if "fc_norm.weight" in state else "cls"
        _map_timm_encoder(state, "", "", out, used, config.image_size // config.patch_size)
        # MAE's mean-pooling fine-tuning deletes the final norm, which that pooling never reads.
        unread = ("layernorm.weight", "layernorm.bias") if pooling == "mean" else ()
        return MaeViTModel(config, pooling=pooling), out, used, state, unread
    if kind == "dan":
        model = DanForImageClassification(dan_config(state))
        _map_dan(state, "", "", out, used)
        return model, out, used, state, ()
    if kind == "emma":
        vit_config = timm_vit_config(state, "vit.", image_size, num_attention_heads=heads)
        config = EmmaConfig(
            vit_config=vit_config.to_dict(),
            cnn_config=dan_config(state, "cnn.").to_dict(),
            head_hidden_size=state["vit.head.0.weight"].shape[0],
            va_head_hidden_size=state["va_head.0.weight"].shape[0],
        )
        expected = NUM_EXPRESSIONS + NUM_ACTION_UNITS
        if state["vit.head.2.weight"].shape[0] != expected:
            raise CheckpointError(
                f"vit.head.2 has {state['vit.head.2.weight'].shape[0]} outputs; EMMA's has {expected}"
            )
        _map_timm_encoder(state, "vit.", "vit.", out, used, vit_config.image_size // vit_config.patch_size)
        for key, value in state.items():
            if key.startswith(("vit.head.", "va_head.")):
                out[key.replace("vit.head.", "head.")] = value
                used.add(key)
        _map_dan(state, "cnn.", "cnn.", out, used)
        return EmmaForAffectAnalysis(config), out, used, state, ()
    raise ValueError(f"unknown checkpoint kind {kind!r}; expected one of {', '.join(CHECKPOINT_KINDS)}")


# Tensors a kind's source never holds, left as initialised (and said so on the card).
_NEVER_IN_SOURCE = {
    "dan": ("class_centers",),  # DAN's affinity loss keeps its centres outside the model
    "emma": ("cnn.class_centers",),
}
# Source tensors a kind drops on purpose (and reports): a fine-tuned ViT's classifier of unknown classes.
_DROPPED_FROM_SOURCE = {"vit": ("head.weight", "head.bias")}


def convert(
    path: str | os.PathLike,
    kind: str | None = None,
    allow_missing: tuple[str, ...] = (),
    image_size: int | None = None,
    num_attention_heads: int | None = None,
    decoder_num_attention_heads: int | None = None,
) -> Conversion:
    """Convert the checkpoint at `path` into its model; raises `CheckpointError` listing what does not fit.

    `image_size` interpolates the position embeddings to another grid; the head counts, which timm files do not
    store, default to MAE's (12 for ViT-B, 16 for ViT-L/H and for MAE's decoder).
    """
    path = str(path)
    checkpoint = load_checkpoint(path)
    kind = kind or detect_kind(checkpoint)
    if kind not in CHECKPOINT_KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; expected one of {', '.join(CHECKPOINT_KINDS)}")
    try:
        model, converted, used, sources, unread = _build(
            checkpoint, kind, image_size, num_attention_heads, decoder_num_attention_heads
        )
    except KeyError as error:
        raise CheckpointError(f"{path} is not a checkpoint of kind {kind}: it has no {error}") from None
    expected = model.state_dict()
    dropped = {key: tuple(sources[key].shape) for key in _DROPPED_FROM_SOURCE.get(kind, ()) if key in sources}
    unknown = sorted(set(sources) - used - set(dropped))
    missing = sorted(set(expected) - set(converted))
    mismatched = sorted(
        f"{key} {tuple(value.shape)} (model {tuple(expected[key].shape)})"
        for key, value in converted.items()
        if key in expected and value.shape != expected[key].shape
    )
    extra = sorted(set(converted) - set(expected))
    never_in_source = (*_NEVER_IN_SOURCE.get(kind, ()), *unread)
    accepted = [key for key in missing if key in never_in_source or _matches(key, allow_missing)]
    missing = [key for key in missing if key not in accepted]
    problems = [
        (f"unknown source tensors: {', '.join(unknown)}" if unknown else ""),
        (f"model tensors with no source (allow with allow_missing): {', '.join(missing)}" if missing else ""),
        (f"shape mismatches: {', '.join(mismatched)}" if mismatched else ""),
        (f"converted names the model lacks: {', '.join(extra)}" if extra else ""),
    ]
    problems = [problem for problem in problems if problem]
    if problems:
        raise CheckpointError(f"{path} does not convert into {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(converted, strict=False)
    model.eval()
    if dropped:
        logger.warning("dropped from %s on purpose: %s", path, dropped)
    return Conversion(model, kind, path, file_sha256(path), dropped, accepted, _interpolation(sources, converted))


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _interpolation(sources: dict, converted: dict) -> str | None:
    """How the encoder's position embeddings were resized, if they were."""
    source = next((value for key, value in sources.items() if key.split(".")[-1] == "pos_embed"), None)
    target = next((value for key, value in converted.items() if key.endswith("embeddings.position_embeddings")), None)
    if source is None or target is None or source.shape == target.shape:
        return None
    old, new = (int(math.isqrt(tensor.shape[1] - 1)) for tensor in (source, target))
    return f"interpolated (bicubic) from a {old}x{old} to a {new}x{new} grid"


_TEMPLATES = {
    "mae-pretraining": MAE_TEMPLATE,
    "vit": MAE_TEMPLATE,
    "dan": DAN_TEMPLATE,
    "emma": EMMA_TEMPLATE,
    "cotex": COTEX_TEMPLATE,
}


def convert_to_folder(path: str | os.PathLike, output_dir: str | os.PathLike, **options) -> Conversion:
    """`convert`, then a Hub-ready folder (weights, config, code, processor, card naming the source and sha256)."""
    conversion = convert(path, **options)
    record = conversion.record()
    note = (
        f"Converted with affect-hf from `{record['source']}` (sha256 `{conversion.sha256}`), a {conversion.kind} "
        "checkpoint; no score was measured after conversion."
    )
    if conversion.dropped:
        note += f" Dropped from the source on purpose: {', '.join(conversion.dropped)}."
    if conversion.left_initialised:
        note += f" Not in the source, left as initialised: {', '.join(conversion.left_initialised)}."
    card = render_model_card(
        conversion.model,
        _TEMPLATES[conversion.kind],
        training_arguments=record,
        data_dir=record["source"],
        data_note=note,
        # The ViT folders are transformers' ViTMAE (no custom code); the others carry this package's model code.
        tags=("vit-mae", "converted")
        if conversion.kind in ("mae-pretraining", "vit")
        else ("affect", "converted", "custom_code"),
        pipeline_tag="image-classification" if conversion.kind in ("dan", "emma", "cotex") else None,
    )
    save_model_folder(conversion.model, Path(output_dir), card)
    return conversion


__all__ = [
    "CHECKPOINT_KINDS",
    "CheckpointError",
    "Conversion",
    "convert",
    "convert_to_folder",
    "detect_kind",
    "load_checkpoint",
]
