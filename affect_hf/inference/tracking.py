"""Stable face ids across a video's frames: greedy matching of boxes by overlap, as SORT does without its motion
model (at video rates a face moves little between analysed frames)."""

import torch

from ..faces.detection import box_iou


class FaceTracker:
    """Gives each detection the id of the track it overlaps most (IoU >= `min_iou`), else a new id.

    A track not seen for more than `max_gap` seconds is closed, so a person who leaves and comes back much later
    gets a new id rather than someone else's.
    """

    def __init__(self, min_iou: float = 0.2, max_gap: float = 1.0):
        self.min_iou, self.max_gap = min_iou, max_gap
        self.boxes: dict[int, torch.Tensor] = {}
        self.last_seen: dict[int, float] = {}
        self.next_id = 0

    def update(self, boxes: torch.Tensor, time: float) -> list[int]:
        for track in [t for t, seen in self.last_seen.items() if time - seen > self.max_gap]:
            del self.boxes[track], self.last_seen[track]
        tracks = list(self.boxes)
        ids: list[int | None] = [None] * len(boxes)
        if tracks and len(boxes):
            overlaps = box_iou(boxes.float(), torch.stack([self.boxes[t] for t in tracks]).float())
            taken: set[int] = set()
            for flat in overlaps.flatten().argsort(descending=True).tolist():
                detection, track = divmod(flat, len(tracks))
                if overlaps[detection, track] < self.min_iou:
                    break
                if ids[detection] is None and track not in taken:
                    ids[detection] = tracks[track]
                    taken.add(track)
        for detection in range(len(boxes)):
            if ids[detection] is None:
                ids[detection] = self.next_id
                self.next_id += 1
            self.boxes[ids[detection]] = boxes[detection].float()
            self.last_seen[ids[detection]] = time
        return ids
