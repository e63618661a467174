"""MTCNN (Zhang et al., "Joint Face Detection and Alignment using Multi-task Cascaded Convolutional Networks", IEEE
SPL 2016) in torch: three small networks in cascade, batched, on the device of the affect model.

P-Net scans an image pyramid (faces down to `min_face_size` pixels), R-Net rejects and refines its candidates on
24 x 24 crops, O-Net does so on 48 x 48 crops and gives the five points of ABAW's alignment template: the eye
centres, the nose tip and the mouth corners. The weights are the original MIT-licensed ones, as shipped in the
`facenet-pytorch` 2.6.0 wheel, converted once by `scripts/convert_mtcnn.py` (`mtcnn.safetensors`; see NOTICE).
The networks were trained on transposed images: their dense layers read features in width-major order.
"""

import torch
from torch import nn
from torch.nn import functional as F


# The five points O-Net gives, in its order (the person's right eye appears on the image's left).
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_right", "mouth_left")
PNET_SIZE, RNET_SIZE, ONET_SIZE = 12, 24, 48


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """[0, 255] pixels as the networks were trained: (x - 127.5) / 128."""
    return (pixels - 127.5) * 0.0078125


def _flatten_width_major(features: torch.Tensor) -> torch.Tensor:
    return features.permute(0, 3, 2, 1).flatten(1)


class PNet(nn.Module):
    """Proposal network: fully convolutional, one 12 x 12 window per output cell (stride 2)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Face probabilities (B x H x W) and box offsets (B x 4 x H x W) of every window."""
        hidden = self.pool1(self.prelu1(self.conv1(pixels)))
        hidden = self.prelu3(self.conv3(self.prelu2(self.conv2(hidden))))
        return self.conv4_1(hidden).softmax(1)[:, 1], self.conv4_2(hidden)


class RNet(nn.Module):
    """Refinement network on 24 x 24 crops."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.pool1(self.prelu1(self.conv1(crops)))
        hidden = self.pool2(self.prelu2(self.conv2(hidden)))
        hidden = self.prelu4(self.dense4(_flatten_width_major(self.prelu3(self.conv3(hidden)))))
        return self.dense5_1(hidden).softmax(1)[:, 1], self.dense5_2(hidden)


class ONet(nn.Module):
    """Output network on 48 x 48 crops: the final boxes and the five points."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Face probabilities (N), box offsets (N x 4) and the points (N x 5 x 2, as fractions of the box)."""
        hidden = self.pool1(self.prelu1(self.conv1(crops)))
        hidden = self.pool2(self.prelu2(self.conv2(hidden)))
        hidden = self.pool3(self.prelu3(self.conv3(hidden)))
        hidden = self.prelu5(self.dense5(_flatten_width_major(self.prelu4(self.conv4(hidden)))))
        points = self.dense6_3(hidden)
        return (
            self.dense6_1(hidden).softmax(1)[:, 1],
            self.dense6_2(hidden),
            torch.stack([points[:, :5], points[:, 5:]], dim=-1),
        )


class Mtcnn(nn.Module):
    """The three networks, under the names the converted weights carry (`pnet.*`, `rnet.*`, `onet.*`)."""

    def __init__(self):
        super().__init__()
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()


def crop_boxes(image: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Each box of a 1 x 3 x H x W image cut out (black beyond the image's edges) and resized to size x size by
    area averaging, as the networks were trained."""
    height, width = image.shape[-2:]
    crops = []
    for x1, y1, x2, y2 in boxes.round().int().tolist():
        x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
        region = image.new_zeros(1, 3, y2 - y1, x2 - x1)
        left, top, right, bottom = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
        if right > left and bottom > top:
            region[..., top - y1 : bottom - y1, left - x1 : right - x1] = image[..., top:bottom, left:right]
        crops.append(F.interpolate(region, size=(size, size), mode="area"))
    return torch.cat(crops) if crops else image.new_zeros(0, 3, size, size)


def non_max_suppression(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, by_min: bool = False):
    """Indices of the boxes kept by greedy NMS, best first; overlap is IoU, or (`by_min`) intersection over the
    smaller area, which O-Net's last pass uses to drop a face's boxes nested in each other."""
    order = scores.argsort(descending=True)
    areas = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(1)
    kept = []
    while len(order):
        best, rest = order[0], order[1:]
        kept.append(best)
        top_left = torch.maximum(boxes[best, :2], boxes[rest, :2])
        bottom_right = torch.minimum(boxes[best, 2:], boxes[rest, 2:])
        intersection = (bottom_right - top_left).clamp(min=0).prod(1)
        union = torch.minimum(areas[best], areas[rest]) if by_min else areas[best] + areas[rest] - intersection
        order = rest[intersection / union.clamp(min=1e-9) <= threshold]
    return torch.stack(kept) if kept else torch.zeros(0, dtype=torch.long, device=boxes.device)


def regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Boxes moved by the networks' offsets (fractions of the box's width and height)."""
    sides = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    return boxes + offsets * sides


def squared(boxes: torch.Tensor) -> torch.Tensor:
    """Square boxes around the same centres, as long as each box's longer side: what R-Net and O-Net were fed."""
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).max(1, keepdim=True).values / 2
    return torch.cat([centres - half, centres + half], 1)


__all__ = ["KEYPOINT_NAMES", "Mtcnn", "ONet", "PNet", "RNet", "crop_boxes", "non_max_suppression", "regress", "squared"]
