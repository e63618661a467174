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


# At most this many input pixels are made float at once (a 12000 x 12000 photo as float would be 1.7 GB): a larger
# region is resized a band of rows at a time, to the same result.
FLOAT_PIXELS = 1 << 23
# P-Net searches a large pyramid level in tiles of this many pixels a side (plus its window's overlap): its first
# layers' activations on a whole 7200 x 7200 level would need gigabytes.
PNET_TILE = 1024


def area_resize(
    image: torch.Tensor,
    size: tuple[int, int],
    box: tuple[int, int, int, int] | None = None,
    float_pixels: int = FLOAT_PIXELS,
) -> torch.Tensor:
    """The `box` (x1, y1, x2, y2 in pixels; default: all) of a 3 x H x W image of any dtype, black beyond the
    image's edges, resized to `size` (height, width) by area averaging: 3 x height x width float, as
    `F.interpolate(mode="area")` gives. A box of more than `float_pixels` pixels is resized a band of rows at a
    time, to the same result, so a large photo is never float as a whole.
    """
    height, width = image.shape[-2:]
    x1, y1, x2, y2 = box or (0, 0, width, height)
    box_height, box_width = y2 - y1, x2 - x1
    # Output row i averages input rows [starts[i], ends[i]) of the box: adaptive average pooling's windows.
    index = torch.arange(size[0] + 1)
    starts, ends = index[:-1] * box_height // size[0], -(-index[1:] * box_height // size[0])
    output_rows = max(1, min(size[0], float_pixels // box_width * size[0] // box_height))
    bands = []
    for first in range(0, size[0], output_rows):
        last = min(first + output_rows, size[0])
        top, bottom = y1 + int(starts[first]), y1 + int(ends[last - 1])
        region = image.new_zeros((3, bottom - top, box_width), dtype=torch.float32)
        inside_top, inside_bottom, left, right = max(top, 0), min(bottom, height), max(x1, 0), min(x2, width)
        if inside_bottom > inside_top and right > left:
            region[:, inside_top - top : inside_bottom - top, left - x1 : right - x1] = image[
                :, inside_top:inside_bottom, left:right
            ]
        if last - first == size[0]:
            bands.append(F.interpolate(region[None], size=size, mode="area")[0])
            continue
        # A band: its columns averaged as a whole, its rows over the whole box's windows (sums of a running sum).
        columns = F.interpolate(region[None], size=(bottom - top, size[1]), mode="area")[0]
        del region
        sums = F.pad(columns.cumsum(1), (0, 0, 1, 0))
        del columns
        band_starts, band_ends = ((index[first:last] + y1 - top).to(sums.device) for index in (starts, ends))
        bands.append(((sums[:, band_ends] - sums[:, band_starts]) / (band_ends - band_starts)[:, None]).float())
    return torch.cat(bands, 1)


def crop_boxes(image: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Each box of a 3 x H x W image (any dtype) cut out, black beyond the image's edges, and resized to size x
    size by area averaging, as the networks were trained: N x 3 x size x size float."""
    crops = []
    for x1, y1, x2, y2 in boxes.round().int().tolist():
        crops.append(area_resize(image, (size, size), (x1, y1, max(x2, x1 + 1), max(y2, y1 + 1))))
    return torch.stack(crops) if crops else torch.zeros(0, 3, size, size, device=image.device)


def pnet_candidates(
    pnet: PNet, level: torch.Tensor, threshold: float, tile: int = PNET_TILE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The output cells of P-Net on a 3 x H x W pyramid level in [0, 255] whose face probability reaches
    `threshold`: their (column, row) indices (N x 2), probabilities (N) and box offsets (N x 4), row by row.

    The level is normalised and searched tile by tile (`tile` even): tiles start at even pixels and overlap by the
    window less its stride, so every cell is computed once, with the value it has on the whole level.
    """
    height, width = level.shape[-2:]
    overlap = PNET_SIZE - 2
    cells, scores, offsets = [], [], []
    for top in range(0, max(height - overlap, 1), tile):
        for left in range(0, max(width - overlap, 1), tile):
            part = level[None, :, top : top + tile + overlap, left : left + tile + overlap]
            probability, offset = pnet(normalise(part))
            rows, columns = torch.nonzero(probability[0] >= threshold, as_tuple=True)
            cells.append(torch.stack([columns + left // 2, rows + top // 2], 1))
            scores.append(probability[0, rows, columns])
            offsets.append(offset[0, :, rows, columns].T)
    cells, scores, offsets = torch.cat(cells), torch.cat(scores), torch.cat(offsets)
    order = (cells[:, 1] * width + cells[:, 0]).argsort()  # as on the whole level: row by row
    return cells[order], scores[order], offsets[order]


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


__all__ = ["KEYPOINT_NAMES", "Mtcnn", "ONet", "PNet", "RNet", "area_resize", "crop_boxes",
           "non_max_suppression", "pnet_candidates", "regress", "squared"]  # fmt: skip
