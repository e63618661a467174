"""Temporal smoothing of each face's outputs: an exponential moving average with a time constant in seconds.

Causal (each row depends only on frames before it), so rows stream to disk as they come, and correct for any frame
rate or `--every_n_frames` because the weight of the past decays with elapsed time, not frame count. What it does:
valence and arousal are averaged; the expression probabilities are averaged (a mean of distributions is still
one) and the expression is their argmax; AU probabilities are averaged and the decisions re-taken at the model's
thresholds. A face's first frame, and a frame after a gap longer than the tracker's, is taken as is.
"""

import math

import torch

from modeling.pipeline_affect import with_decisions


SMOOTHED = ("valence_arousal", "expression_probabilities", "au_probabilities")


class ExponentialSmoother:
    """`update(face_id, time, scores)` -> the face's smoothed scores; `time_constant` in seconds (63% of the weight
    on the last `time_constant` seconds)."""

    def __init__(self, time_constant: float, config):
        if time_constant <= 0:
            raise ValueError(f"the smoothing time constant must be positive, got {time_constant}")
        self.time_constant, self.config = time_constant, config
        self.state: dict[int, tuple[float, dict[str, torch.Tensor]]] = {}

    def update(self, face_id: int, time: float, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`scores`: one face's `affect_scores` (tensors with a leading dimension of 1)."""
        current = {name: scores[name] for name in SMOOTHED if name in scores}
        if face_id in self.state:
            last_time, previous = self.state[face_id]
            keep = math.exp(-max(time - last_time, 0.0) / self.time_constant)
            current = {name: keep * previous[name] + (1 - keep) * value for name, value in current.items()}
        self.state[face_id] = (time, current)
        return with_decisions({**scores, **current}, self.config)

    def forget(self, face_ids: set[int]) -> None:
        for face_id in set(self.state) - face_ids:
            del self.state[face_id]
