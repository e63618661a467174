"""`affect-hf predict`: pictures, folders and videos -> one table row per frame x face, streamed to disk.

Frames are decoded ahead in a background thread (`media.prefetched_frames`), batched across frames and files to
the detector and the affect model on one device, tracked per video into stable face ids, optionally smoothed over
time, and written as they come. Ctrl-C, a crash or a broken file never loses the rows already written.
"""

import logging
import os
import time as clock
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from modeling.pipeline_affect import describe

from .analysis import FaceAffectAnalyzer, FrameAnalysis
from .media import Frame, MediaReport, expand_paths, prefetched_frames
from .smoothing import ExponentialSmoother
from .table import TableWriter, check_table_path, face_row, table_schema
from .tracking import FaceTracker


logger = logging.getLogger(__name__)


@dataclass
class PredictionSummary:
    output: Path
    rows: int = 0
    frames: int = 0
    faces: int = 0
    frames_without_face: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    media: MediaReport = field(default_factory=MediaReport)
    plots: list[Path] = field(default_factory=list)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


class _FaceIds:
    """One tracker (and smoother) per video; still images number their faces by rank."""

    def __init__(self, max_gap: float, smoothing: float, config: Any):
        self.max_gap, self.smoothing, self.config = max_gap, smoothing, config
        self.source: str | None = None

    def assign(self, frame: Frame, analysis: FrameAnalysis) -> tuple[list[int], list[dict[str, torch.Tensor]]]:
        faces = analysis.faces
        per_face = [{name: value[i : i + 1] for name, value in analysis.scores.items()} for i in range(len(faces))]
        if frame.time is None:
            return list(range(len(faces))), per_face
        if frame.source != self.source:
            self.source, self.tracker = frame.source, FaceTracker(max_gap=self.max_gap)
            self.smoother = ExponentialSmoother(self.smoothing, self.config) if self.smoothing else None
        ids = self.tracker.update(faces.boxes, frame.time)
        if self.smoother is not None:
            per_face = [self.smoother.update(i, frame.time, s) for i, s in zip(ids, per_face, strict=True)]
            self.smoother.forget(set(self.tracker.boxes))
        return ids, per_face


def frame_rows(frame: Frame, analysis: FrameAnalysis, ids: list[int], scores: list[dict], config: Any) -> list[dict]:
    """The table rows of one frame: one per face, or one row with an empty face when there is none."""
    base = {"source": frame.source, "frame": frame.index, "time": frame.time}
    faces = analysis.faces
    if not len(faces):
        return [{**base, "face_id": None}]
    rows = []
    for i, face_id in enumerate(ids):
        row = {**base, "face_id": face_id, "face_score": float(faces.scores[i])}
        row.update(zip(("box_x1", "box_y1", "box_x2", "box_y2"), faces.boxes[i].tolist(), strict=True))
        for name, (x, y) in zip(faces.keypoint_names, faces.landmarks[i].tolist(), strict=True):
            row[f"{name}_x"], row[f"{name}_y"] = x, y
        row.update(face_row(describe(scores[i], 0, config)))
        rows.append(row)
    return rows


def predict(
    paths: list[str | os.PathLike],
    model: str | os.PathLike,
    output: str | os.PathLike,
    batch_size: int = 16,
    device: str = "auto",
    every_n_frames: int = 1,
    max_faces: int | None = None,
    min_face_score: float = 0.5,
    smoothing: float = 0.0,
    max_gap: float = 1.0,
    plots_dir: str | os.PathLike | None = None,
    overlay: str | os.PathLike | None = None,
    progress: bool = True,
    analyzer: FaceAffectAnalyzer | None = None,
    backend: str = "torch",
    max_seconds: float | None = None,
) -> PredictionSummary:
    """Analyse every face of every frame of `paths` (files or folders) into the table `output` (.csv or .parquet).

    The model is loaded (and checked to be an affect model) before any file is read. Returns what was done; the
    table is complete up to the last frame analysed even when interrupted (`summary.interrupted`). `max_seconds`
    cuts each video there (`summary.media.cut_at_seconds`).
    """
    if every_n_frames < 1 or batch_size < 1:
        raise ValueError("--every_n_frames and --batch_size must be at least 1")
    check_table_path(output)
    own_outputs = (output, *(path for path in (plots_dir, overlay) if path is not None))
    files = expand_paths(paths, exclude=own_outputs)
    if analyzer is None:
        analyzer = FaceAffectAnalyzer.from_pretrained(
            model,
            device=device,
            batch_size=batch_size,
            min_face_score=min_face_score,
            max_faces=max_faces,
            backend=backend,
        )
    config = analyzer.config
    overlay_writer = None
    if overlay is not None:
        from .overlay import OverlayWriter

        overlay_writer = OverlayWriter(overlay, config)
    summary = PredictionSummary(Path(output))
    face_ids = _FaceIds(max_gap, smoothing, config)
    frames = prefetched_frames(files, every_n_frames, summary.media, 2 * batch_size, max_seconds)
    bar = tqdm(unit="frame", desc="predict", disable=not progress, dynamic_ncols=True)
    started = clock.perf_counter()
    writer = TableWriter(output, table_schema(config, analyzer.detector.keypoint_names))
    try:
        batch: list[Frame] = []
        for frame in _with_end(frames):
            if frame is not None:
                batch.append(frame)
            if batch and (frame is None or len(batch) == batch_size):
                analyses = analyzer.analyze([item.image for item in batch])
                for item, analysis in zip(batch, analyses, strict=True):
                    ids, scores = face_ids.assign(item, analysis)
                    rows = frame_rows(item, analysis, ids, scores, config)
                    writer.write(rows)
                    summary.rows += len(rows)
                    summary.faces += len(analysis.faces)
                    summary.frames_without_face += not len(analysis.faces)
                    if overlay_writer is not None:
                        overlay_writer.add(item, rows, summary.media.video_rates.get(item.source), every_n_frames)
                summary.frames += len(batch)
                bar.update(len(batch))
                bar.set_postfix(faces=summary.faces)
                batch = []
    except KeyboardInterrupt:
        summary.interrupted = True
        logger.warning("interrupted: keeping the %d rows written so far", summary.rows)
    finally:
        summary.seconds = clock.perf_counter() - started
        try:  # the rows first: whatever happens next, they are on disk
            writer.close(keep=summary.frames > 0)
        finally:
            try:
                if overlay_writer is not None:
                    overlay_writer.close()
            finally:
                bar.close()
                frames.close()
    if plots_dir is not None and summary.rows:
        from .plots import plot_table

        summary.plots = plot_table(summary.output, plots_dir, config)
    return summary


def _with_end(frames):
    """The frames, then None: the signal to run the last, short batch."""
    yield from frames
    yield None
