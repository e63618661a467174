"""One result type per face (`FaceResult`) and the one row schema of every table written from it.

The analyzer makes a `FaceResult` per face found; later stages (the tracker's ids, smoothing over time) make derived
copies with `dataclasses.replace`. `to_dict()` is the pipeline's answer for the face, `to_row()` its table row.

The table (`affect-hf predict`, `affect_hf.analyze`, the app) has one row per frame x face, in this column order:
- `source`, `frame` (the frame's index in its video; 0 for a picture), `time` (seconds; empty for a picture);
- `face_id` (empty when the frame has no face), `face_score` (the detector's), the box `box_x1..box_y2` (pixels);
- quality: `face_width` (the box's width in pixels), `sharpness` (the variance of the aligned crop's Laplacian:
  higher is sharper; `inference.analysis.laplacian_variance`);
- head pose: `yaw`, `pitch`, `roll` in degrees (`faces.pose`: yaw > 0 turned to the person's left, pitch > 0
  looking up, roll > 0 counterclockwise on screen); empty for a detector without the five points;
- the five ABAW landmarks `right_eye`, `left_eye`, `nose_tip`, `mouth_right`, `mouth_left` as `<name>_x`,
  `<name>_y`, whatever the detector (empty where it gives no such point);
- `valence`, `arousal` (EMMA), `expression`, one `expression_<Label>` probability per class, and per AU
  `<AU>_probability` and `<AU>` (1 when active at the model's threshold, else 0): a temporal model's answers where
  one was run (`--temporal`), and then with `--keep_frame_outputs` the frame model's own beside them, the same
  columns prefixed `frame_`;
- last, the detector's other landmarks (BlazeFace: `mouth_center`, the ear tragions), `_x` and `_y` (empty in the
  rows of faces another detector found).
"""

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import pyarrow as pa
import torch

from ..faces.alignment import ABAW_LANDMARKS


FRAME_COLUMNS = (("source", pa.string()), ("frame", pa.int64()), ("time", pa.float64()))
BOX_COLUMNS = ("box_x1", "box_y1", "box_x2", "box_y2")
QUALITY_COLUMNS = ("face_width", "sharpness")
POSE_COLUMNS = ("yaw", "pitch", "roll")
# The frame model's own answers beside a temporal model's (`--keep_frame_outputs`): its columns with this prefix.
FRAME_LEVEL_PREFIX = "frame_"
# What a face's answer (`to_dict`) leaves out: tensors for the later stages, and the frame-level answers (nested).
HIDDEN_FIELDS = ("features", "frame_scores", "frame_level")
AFFECT_FIELDS = ("valence", "arousal", "expression", "expression_scores", "au_probabilities", "au_active")


@dataclass(frozen=True)
class FaceResult:
    """One face of one picture or frame: where it is, how sure the detector is, and the model's answers.

    Coordinates are the picture's pixels (x right, y down). `landmarks` holds the detector's named points.
    `face_id` numbers the faces of a picture by rank (best first); in a video the tracker makes it an identity.
    `valence`/`arousal` exist for EMMA, the AU fields for models with AU outputs; the pose needs the five points.
    `features` is the model's pooled feature of the face where the model gives one.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: dict[str, tuple[float, float]]
    expression: str
    expression_scores: dict[str, float]
    face_id: int | None = None
    valence: float | None = None
    arousal: float | None = None
    au_probabilities: dict[str, float] | None = None
    au_active: dict[str, bool] | None = None
    yaw: float | None = None
    pitch: float | None = None
    roll: float | None = None
    sharpness: float | None = None
    # The affect model's pooled feature of the face (its appearance, for the tracker and a temporal model), and the
    # scores EMMA's VA head reads (`modeling_temporal.frame_inputs`, for a temporal model); in no dict or row.
    features: torch.Tensor | None = field(default=None, compare=False, repr=False)
    frame_scores: torch.Tensor | None = field(default=None, compare=False, repr=False)
    # The frame model's own answers, where a temporal model's replaced them and they are kept (`--keep_frame_outputs`).
    frame_level: "FaceResult | None" = field(default=None, compare=False, repr=False)

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    def to_dict(self) -> dict[str, Any]:
        """The pipeline's answer: box, score, landmarks, face_id, then the affect fields (those the model has)."""
        result: dict[str, Any] = {
            "box": list(self.box),
            "score": self.score,
            "landmarks": {name: list(point) for name, point in self.landmarks.items()},
            "face_id": self.face_id,
        }
        for entry in fields(self):
            value = getattr(self, entry.name)
            if entry.name not in result and entry.name not in HIDDEN_FIELDS and value is not None:
                result[entry.name] = dict(value) if isinstance(value, dict) else value
        if self.frame_level is not None:
            result["frame_level"] = {name: value for name, value in self.frame_level.to_dict().items()
                                     if name in AFFECT_FIELDS}  # fmt: skip
        return result

    def affect_columns(self) -> dict[str, Any]:
        """The model's answers as table columns: valence, arousal, expression, its probabilities, the AUs."""
        row: dict[str, Any] = {}
        if self.valence is not None:
            row["valence"], row["arousal"] = self.valence, self.arousal
        row["expression"] = self.expression
        row.update({f"expression_{label}": score for label, score in self.expression_scores.items()})
        for name, probability in (self.au_probabilities or {}).items():
            row[f"{name}_probability"], row[name] = probability, int(self.au_active[name])
        return row

    def to_row(self) -> dict[str, Any]:
        """The face's columns of the table (all but the frame's: `source`, `frame`, `time`)."""
        row: dict[str, Any] = {"face_id": self.face_id, "face_score": self.score}
        row.update(zip(BOX_COLUMNS, self.box, strict=True))
        row.update(face_width=self.width, sharpness=self.sharpness, yaw=self.yaw, pitch=self.pitch, roll=self.roll)
        for name in ABAW_LANDMARKS:
            row[f"{name}_x"], row[f"{name}_y"] = self.landmarks.get(name, (None, None))
        row.update(self.affect_columns())
        if self.frame_level is not None:
            frame_level = self.frame_level.affect_columns()
            row.update({f"{FRAME_LEVEL_PREFIX}{name}": value for name, value in frame_level.items()})
        for name, (x, y) in self.landmarks.items():
            if name not in ABAW_LANDMARKS:
                row[f"{name}_x"], row[f"{name}_y"] = x, y
        return row


def frame_rows(source: str, frame: int, time: float | None, faces: Sequence[FaceResult]) -> list[dict[str, Any]]:
    """The table rows of one frame: one per face, or one row with an empty `face_id` when it has none."""
    base = {"source": source, "frame": frame, "time": time}
    if not faces:
        return [{**base, "face_id": None}]
    return [{**base, **face.to_row()} for face in faces]


def extra_landmarks(landmark_names: Sequence[str]) -> tuple[str, ...]:
    """A detector's landmarks beyond the five ABAW points: the table's last columns."""
    return tuple(name for name in landmark_names if name not in ABAW_LANDMARKS)


def affect_schema(config: Any, prefix: str = "") -> list[tuple[str, pa.DataType]]:
    """The answer columns of a model (its labels and AUs), in order, their names prefixed with `prefix`."""
    emma = getattr(config, "model_type", None) == "emma"
    columns = [("valence", pa.float32()), ("arousal", pa.float32())] if emma else []
    columns += [("expression", pa.string())]
    columns += [(f"expression_{config.id2label[i]}", pa.float32()) for i in range(len(config.id2label))]
    for name in getattr(config, "au_names", ()):
        columns += [(f"{name}_probability", pa.float32()), (name, pa.int8())]
    return [(prefix + name, kind) for name, kind in columns]


def table_schema(config: Any, landmark_names: Sequence[str], frame_level: bool = False) -> pa.Schema:
    """The columns and their types for a model (its labels and AUs) and a detector (its landmarks); `frame_level`:
    the frame model's own answers too, beside a temporal model's (`FRAME_LEVEL_PREFIX`)."""
    columns = [*FRAME_COLUMNS, ("face_id", pa.int64()), ("face_score", pa.float32())]
    columns += [(name, pa.float32()) for name in (*BOX_COLUMNS, *QUALITY_COLUMNS, *POSE_COLUMNS)]
    columns += [(f"{name}_{axis}", pa.float32()) for name in ABAW_LANDMARKS for axis in "xy"]
    columns += affect_schema(config)
    if frame_level:
        columns += affect_schema(config, FRAME_LEVEL_PREFIX)
    columns += [(f"{name}_{axis}", pa.float32()) for name in extra_landmarks(landmark_names) for axis in "xy"]
    return pa.schema(columns)


__all__ = ["FRAME_LEVEL_PREFIX", "FaceResult", "affect_schema", "frame_rows", "table_schema"]
