"""BlazeFace (MediaPipe's short-range face detector) in torch: batched on the device of the affect model.

The network, its anchors and its decoding follow MediaPipe's `face_detection_short_range` graph (Apache-2.0); the
weights are converted once from its `.tflite` file by `scripts/convert_blazeface.py` and ship with this package
(`blazeface_short_range.safetensors`; see `NOTICE` beside it). Tensors: NCHW inputs in [-1, 1], 128 x 128.
"""

import torch
from torch import nn
from torch.nn import functional as F


INPUT_SIZE = 128
# MediaPipe's six keypoints, in output order. "right" is the person's right: it appears on the image's left.
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear_tragion", "left_ear_tragion")
# SsdAnchorsCalculator of the short-range graph, by stride: 2 anchors per cell on the 16 x 16 map, 6 on the 8 x 8.
ANCHORS_PER_CELL = {8: 2, 16: 6}
# TensorsToDetectionsCalculator: raw offsets are in input pixels; scores are clipped before the sigmoid.
SCORE_CLIPPING = 100.0
# (input channels, output channels, stride) of the 16 BlazeBlocks after the 5 x 5 stem.
BLOCKS = (
    (24, 24, 1), (24, 28, 1), (28, 32, 2), (32, 36, 1), (36, 42, 1), (42, 48, 2), (48, 56, 1), (56, 64, 1),
    (64, 72, 1), (72, 80, 1), (80, 88, 1), (88, 96, 2), (96, 96, 1), (96, 96, 1), (96, 96, 1), (96, 96, 1),
)  # fmt: skip
# Index of the block whose output feeds the stride-8 heads; the last block feeds the stride-16 heads.
HIGH_RESOLUTION_BLOCK = 10


class BlazeBlock(nn.Module):
    """Depthwise 3 x 3 + pointwise 1 x 1 with a residual (max-pooled and zero-padded in channels where needed)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.extra_channels = out_channels - in_channels
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, stride, padding=1 if stride == 1 else 0,
                                   groups=in_channels)  # fmt: skip
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        residual = hidden
        if self.stride == 2:
            hidden = F.pad(hidden, (0, 1, 0, 1))  # TensorFlow's "SAME" padding for an even size and stride 2
            residual = F.max_pool2d(residual, 2)
        if self.extra_channels:
            residual = F.pad(residual, (0, 0, 0, 0, 0, self.extra_channels))
        return F.relu(self.pointwise(self.depthwise(hidden)) + residual)


class BlazeFace(nn.Module):
    """Raw network: B x 3 x 128 x 128 in [-1, 1] -> (B x 896 x 16 box/keypoint offsets, B x 896 score logits)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 5, stride=2)
        self.blocks = nn.ModuleList(BlazeBlock(*block) for block in BLOCKS)
        high, low = BLOCKS[HIGH_RESOLUTION_BLOCK][1], BLOCKS[-1][1]
        self.classifier_8 = nn.Conv2d(high, ANCHORS_PER_CELL[8], 1)
        self.classifier_16 = nn.Conv2d(low, ANCHORS_PER_CELL[16], 1)
        self.regressor_8 = nn.Conv2d(high, ANCHORS_PER_CELL[8] * 16, 1)
        self.regressor_16 = nn.Conv2d(low, ANCHORS_PER_CELL[16] * 16, 1)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = F.relu(self.stem(F.pad(pixel_values, (1, 2, 1, 2))))
        for index, block in enumerate(self.blocks):
            hidden = block(hidden)
            if index == HIGH_RESOLUTION_BLOCK:
                high_resolution = hidden
        batch = pixel_values.shape[0]

        def flatten(head: nn.Module, features: torch.Tensor, width: int) -> torch.Tensor:
            return head(features).permute(0, 2, 3, 1).reshape(batch, -1, width)  # anchors in (y, x, anchor) order

        regressors = torch.cat(
            [flatten(self.regressor_8, high_resolution, 16), flatten(self.regressor_16, hidden, 16)], 1
        )
        scores = torch.cat([flatten(self.classifier_8, high_resolution, 1), flatten(self.classifier_16, hidden, 1)], 1)
        return regressors, scores.squeeze(-1)


def anchor_centers() -> torch.Tensor:
    """896 x 2 anchor centres (x, y) in [0, 1]; the short-range graph's anchors are all of size 1 x 1."""
    centers = []
    for stride, per_cell in ANCHORS_PER_CELL.items():
        grid = INPUT_SIZE // stride
        coordinates = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
        y, x = torch.meshgrid(coordinates, coordinates, indexing="ij")
        centers.append(torch.stack([x, y], -1).reshape(-1, 1, 2).expand(-1, per_cell, 2).reshape(-1, 2))
    return torch.cat(centers)


def decode(regressors: torch.Tensor, logits: torch.Tensor, anchors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Raw outputs -> boxes B x 896 x 4 (x1, y1, x2, y2), keypoints B x 896 x 6 x 2, scores B x 896; all in [0, 1]."""
    offsets = regressors / INPUT_SIZE
    center = offsets[..., 0:2] + anchors
    half_size = offsets[..., 2:4] / 2
    boxes = torch.cat([center - half_size, center + half_size], -1)
    keypoints = offsets[..., 4:].unflatten(-1, (len(KEYPOINT_NAMES), 2)) + anchors[:, None, :]
    scores = torch.sigmoid(logits.clamp(-SCORE_CLIPPING, SCORE_CLIPPING))
    return boxes, keypoints, scores
