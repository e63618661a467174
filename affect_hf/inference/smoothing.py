"""Temporal smoothing of each face's outputs: an exponential moving average with a time constant in seconds.

Causal (each row depends only on frames before it), so rows stream to disk as they come, and correct for any frame
rate or `--every_n_frames` because the weight of the past decays with elapsed time, not frame count. What it does:
valence and arousal are averaged; the expression probabilities are averaged (a mean of distributions is still
one) and the expression is their argmax; AU probabilities are averaged and the decisions re-taken at the model's
thresholds. A face's first frame, and a frame after a gap longer than the tracker's, is taken as is.
"""

import math
from dataclasses import replace

import torch

from ..modeling.pipeline_affect import describe, with_decisions
from .results import FaceResult


class ExponentialSmoother:
    """`update(face, time)` -> a copy of the face with its outputs smoothed over its earlier frames (by `face_id`);
    `time_constant` in seconds (63% of the weight on the last `time_constant` seconds)."""

    def __init__(self, time_constant: float, config):
        if time_constant <= 0:
            raise ValueError(f"the smoothing time constant must be positive, got {time_constant}")
        self.time_constant, self.config = time_constant, config
        self.state: dict[int, tuple[float, dict[str, torch.Tensor]]] = {}

    def update(self, face: FaceResult, time: float) -> FaceResult:
        current = _scores(face)
        if face.face_id in self.state:
            last_time, previous = self.state[face.face_id]
            keep = math.exp(-max(time - last_time, 0.0) / self.time_constant)
            current = {name: keep * previous[name] + (1 - keep) * value for name, value in current.items()}
        self.state[face.face_id] = (time, current)
        return replace(face, **describe(with_decisions(current, self.config), 0, self.config))

    def forget(self, face_ids: set[int]) -> None:
        for face_id in set(self.state) - face_ids:
            del self.state[face_id]


def _scores(face: FaceResult) -> dict[str, torch.Tensor]:
    """A face's probabilities (and valence/arousal) as the 1-row tensors `affect_scores` gives."""
    scores = {"expression_probabilities": torch.tensor([list(face.expression_scores.values())])}
    if face.valence is not None:
        scores["valence_arousal"] = torch.tensor([[face.valence, face.arousal]])
    if face.au_probabilities is not None:
        scores["au_probabilities"] = torch.tensor([list(face.au_probabilities.values())])
    return scores
