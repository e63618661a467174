"""Stable face ids across a video's frames, through crossings and short occlusions: motion and appearance together,
assigned by the Hungarian method (SORT's recipe with DeepSORT's appearance term).

Each track predicts where its face is now from its motion (a running mean of its centre's velocity: a face that
is being covered changes its box's shape, not where it goes; its last box counts too) and remembers what it looks
like (a running mean of the affect model's pooled feature, unit length). A face and a track may be paired
when the face overlaps the predicted box (IoU >= `min_iou`) or looks like the track (cosine similarity >=
`min_similarity`); among those pairs the one assignment with the highest total score is taken (scipy's
`linear_sum_assignment`), score = IoU + similarity. So two people who pass each other keep their ids (the boxes
overlap, the looks differ), and a face hidden for up to `max_gap` seconds gets its id back where it reappears.
Without features (a model that gives none), overlap and motion alone decide.
"""

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..faces.detection import box_iou


class FaceTracker:
    """`update(boxes, time, features)` -> an id per face; ids are never reused within a video."""

    def __init__(self, min_iou: float = 0.2, max_gap: float = 2.0, min_similarity: float = 0.6, memory: float = 0.9):
        self.min_iou, self.max_gap, self.min_similarity, self.memory = min_iou, max_gap, min_similarity, memory
        self.boxes: dict[int, torch.Tensor] = {}  # the last box of each open track
        self.velocity: dict[int, torch.Tensor] = {}  # its centre's movement per second (x, y), a running mean
        self.features: dict[int, torch.Tensor] = {}
        self.last_seen: dict[int, float] = {}
        self.next_id = 0

    def predicted_boxes(self, tracks: list[int], time: float) -> torch.Tensor:
        """Each track's last box moved on by its velocity to `time` (its size kept)."""
        return torch.stack([self.boxes[t] + (self.velocity[t] * (time - self.last_seen[t])).repeat(2) for t in tracks])

    def update(self, boxes: torch.Tensor, time: float, features: torch.Tensor | None = None) -> list[int]:
        for track in [t for t, seen in self.last_seen.items() if time - seen > self.max_gap]:
            for table in (self.boxes, self.velocity, self.features, self.last_seen):
                table.pop(track, None)
        boxes = boxes.float()
        features = None if features is None else torch.nn.functional.normalize(features.float(), dim=1)
        tracks = list(self.boxes)
        ids: list[int | None] = [None] * len(boxes)
        if tracks and len(boxes):
            # Where the track's motion puts it, or where it was last seen (a guess that fails when it stopped).
            last = torch.stack([self.boxes[track] for track in tracks])
            overlap = torch.maximum(box_iou(boxes, self.predicted_boxes(tracks, time)), box_iou(boxes, last)).numpy()
            similarity = np.full_like(overlap, -1.0)
            if features is not None:
                known = [column for column, track in enumerate(tracks) if track in self.features]
                if known:
                    memory = torch.stack([self.features[tracks[column]] for column in known])
                    similarity[:, known] = (features @ memory.T).numpy()
            allowed = (overlap >= self.min_iou) | (similarity >= self.min_similarity)
            score = overlap + np.maximum(similarity, 0.0)
            rows, columns = linear_sum_assignment(np.where(allowed, -score, 1e6))
            for row, column in zip(rows, columns, strict=True):
                if allowed[row, column]:
                    ids[row] = tracks[column]
        for detection, track in enumerate(ids):
            if track is None:
                track = ids[detection] = self.next_id
                self.next_id += 1
                self.velocity[track] = torch.zeros(2)
            else:
                elapsed = time - self.last_seen[track]
                if elapsed > 0:
                    moved = (_centre(boxes[detection]) - _centre(self.boxes[track])) / elapsed
                    self.velocity[track] = 0.5 * self.velocity[track] + 0.5 * moved
            self.boxes[track], self.last_seen[track] = boxes[detection], time
            if features is not None:
                remembered = self.features.get(track)
                mixed = features[detection] if remembered is None else (
                    self.memory * remembered + (1 - self.memory) * features[detection]
                )  # fmt: skip
                self.features[track] = torch.nn.functional.normalize(mixed, dim=0)
        return ids


def _centre(box: torch.Tensor) -> torch.Tensor:
    return (box[:2] + box[2:]) / 2


__all__ = ["FaceTracker"]
