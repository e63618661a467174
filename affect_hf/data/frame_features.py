"""A frozen frame-level model's per-frame outputs over a video track, extracted once and cached as Arrow, and the
windows of them a temporal model trains and is scored on.

Extraction is the cost (the ViT over every frame); it runs through `datasets.map` into an Arrow file named by the
split's and the model's fingerprints, beside the run's output, so a second run (or a resumed one) reads it back.
Windows span `window` frame numbers (not rows): a frame without an image is a gap in its window, never a row of
zeros; the temporal model places each frame by its number.
"""

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from ..labels import MISSING_ACTION_UNIT, MISSING_EXPRESSION, MISSING_VALENCE_AROUSAL
from ..modeling.modeling_temporal import frame_inputs
from .datasets import AbawMtlTorchDataset


FEATURES_FORMAT_VERSION = 1  # bumped when what `extract_frame_features` writes changes


def frame_features_fingerprint(split: Dataset, model_weights_sha256: str, image_size: int) -> str:
    """What names an extraction: the split's rows (its `datasets` fingerprint), the model's weights and the input
    size. A changed split or model is another file, never a stale one read back."""
    key = f"{split._fingerprint}|{model_weights_sha256}|{image_size}|{FEATURES_FORMAT_VERSION}"
    return hashlib.sha256(key.encode()).hexdigest()[:20]


@torch.inference_mode()
def extract_frame_features(
    model: Any, split: Dataset, cache_dir: str | os.PathLike, model_weights_sha256: str, batch_size: int = 64
) -> Dataset:
    """`split` (a track reader's rows: image, video, frame, labels) with two more columns per frame, `features`
    (the frame model's pooled feature) and `scores` (the scores its VA head reads, `frame_inputs`), in float32.

    Read back from `cache_dir/frame_features-<fingerprint>.arrow` when an earlier run wrote it (`datasets.map`
    writes it whole or not at all: a killed extraction leaves nothing half-written to read back).
    """
    image_size = model.config.image_size
    fingerprint = frame_features_fingerprint(split, model_weights_sha256, image_size)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    images = AbawMtlTorchDataset(split, image_size=image_size, train=False)
    inner = getattr(model, "module", model)

    def extract(batch: dict[str, list], indices: list[int]) -> dict[str, np.ndarray]:
        pixel_values = torch.stack([images[index]["pixel_values"] for index in indices])
        outputs = model(pixel_values=pixel_values.to(inner.device, inner.dtype))
        features, scores = frame_inputs(outputs)
        return {"features": features.float().cpu().numpy(), "scores": scores.float().cpu().numpy()}

    return split.map(
        extract, batched=True, batch_size=batch_size, with_indices=True, new_fingerprint=fingerprint,
        cache_file_name=str(cache_dir / f"frame_features-{fingerprint}.arrow"), desc="frame features",
    )  # fmt: skip


@dataclass(frozen=True)
class Window:
    """Rows `start` to `stop` of one video's frames: those whose numbers lie in [first, first + span)."""

    video: str
    start: int
    stop: int


def track_windows(frames: Dataset, span: int, stride: int, each_frame_once: bool = False) -> list[Window]:
    """Windows over each video of `frames` (rows per video, frames in order, as the track readers give them):
    `span` frame numbers long, one every `stride` frame numbers, the last reaching the video's last frame (for
    training: every window full length). `each_frame_once` (evaluation): windows side by side, the last cut short,
    so that every frame is in exactly one, in order. A video shorter than `span` is one window; a window the gaps
    leave empty is dropped."""
    if span < 1 or not 1 <= stride <= span:
        raise ValueError(f"windows need span >= 1 and 1 <= stride <= span, got span {span} and stride {stride}")
    videos = np.asarray(frames["video"])
    numbers = np.asarray(frames["frame"], dtype=np.int64)
    windows = []
    boundaries = np.flatnonzero(videos[1:] != videos[:-1]) + 1
    for first_row, end_row in zip([0, *boundaries.tolist()], [*boundaries.tolist(), len(videos)], strict=True):
        for start, stop in window_rows(numbers[first_row:end_row], span, stride, each_frame_once):
            windows.append(Window(str(videos[first_row]), first_row + start, first_row + stop))
    return windows


def window_rows(
    positions: Sequence[float], span: float, stride: int = 1, each_frame_once: bool = False,
    origin: float | None = None,
) -> list[tuple[int, int]]:  # fmt: skip
    """`track_windows` over one video (or one face's track): (start, stop) rows of `positions` (frame numbers, in
    order) for each window. `each_frame_once` also takes positions in frames that are not whole (a time x a frame
    rate) and windows from `origin` (default the first position) on; the windows then partition the rows, whatever
    the rounding of the positions."""
    positions = np.asarray(positions)
    first, last = positions[0], positions[-1]
    if each_frame_once:
        origin = first if origin is None else origin
        count = math.floor((last - origin) / span + 1e-9) + 1
        # Each edge once, so that a window ends where the next begins; a frame within rounding of an edge is past it.
        edges = np.searchsorted(positions, origin + span * np.arange(count + 1) - 1e-6)
        edges[0], edges[-1] = 0, len(positions)
        return [(int(start), int(stop)) for start, stop in zip(edges[:-1], edges[1:], strict=True) if stop > start]
    starts = list(range(int(first), max(int(last) - int(span) + 1, int(first)) + 1, stride))
    if starts[-1] + span <= last:
        starts.append(int(last - span + 1))  # the last window ends at the video's end
    bounds = []
    for start in starts:
        rows = np.searchsorted(positions, [start, start + span])
        if rows[1] > rows[0]:
            bounds.append((int(rows[0]), int(rows[1])))
    return bounds


class WindowDataset(torch.utils.data.Dataset):
    """Windows of frame features as a temporal model's inputs, each padded to `span` frames so that the loop's
    default collate stacks them: `features`, `scores`, `positions` (the frames' numbers), `mask` (True for a real
    frame) and the frames' labels with EMMA's missing codes (padding is masked, whatever its labels)."""

    def __init__(self, frames: Dataset, windows: list[Window], span: int):
        self.windows, self.span = windows, span
        # Read a window at a time from the (memory-mapped) Arrow table: the features never all sit in memory.
        self.frames = frames.with_format("numpy", columns=["features", "scores", "frame", "valence", "arousal",
                                                           "expression", "action_units"])  # fmt: skip

    def __len__(self) -> int:
        return len(self.windows)

    def set_epoch(self, epoch: int) -> None:
        """The loop's per-epoch call (augmentation seeds, for pictures): windows of features are not augmented."""

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        window = self.windows[index]
        columns, count = self.frames[window.start : window.stop], window.stop - window.start

        def padded(values: np.ndarray, fill: float, dtype: torch.dtype) -> torch.Tensor:
            out = np.full((self.span, *values.shape[1:]), fill, dtype=values.dtype)
            out[:count] = values
            return torch.as_tensor(out, dtype=dtype)

        valence_arousal = np.stack([columns["valence"], columns["arousal"]], axis=-1)
        positions = padded(columns["frame"], 0, torch.int64)
        positions[count:] = positions[count - 1] if count else 0  # padding sits at the last frame (masked anyway)
        return {
            "features": padded(columns["features"], 0.0, torch.float32),
            "scores": padded(columns["scores"], 0.0, torch.float32),
            "positions": positions,
            "mask": torch.arange(self.span) < count,
            "valence_arousal": padded(valence_arousal, MISSING_VALENCE_AROUSAL, torch.float32),
            "expression": padded(columns["expression"], MISSING_EXPRESSION, torch.int64),
            "action_units": padded(columns["action_units"], MISSING_ACTION_UNIT, torch.int64),
        }


__all__ = [
    "Window",
    "WindowDataset",
    "extract_frame_features",
    "frame_features_fingerprint",
    "track_windows",
    "window_rows",
]
