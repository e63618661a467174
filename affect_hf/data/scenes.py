"""Scenes built from real photos, with known answers, for the tests and the benchmark: a crowd pasted from
skimage's astronaut (scaled, mirrored, grey, turned; each face's five points known), and a video of two different
people (the astronaut and skimage's cameraman) who cross, one hidden for a second. Needs scikit-image (a
development dependency) for its photos.
"""

import math
from dataclasses import dataclass

import numpy as np
import PIL.Image


def astronaut() -> np.ndarray:
    from skimage.data import astronaut as photo

    return photo()


def camera() -> np.ndarray:
    from skimage.data import camera as photo

    return photo()


# The astronaut's face, by hand at 8x zoom, in the 512 x 512 photo's pixels (the person's right eye on the left).
ASTRONAUT_POINTS = {
    "right_eye": (203.1, 101.5),
    "left_eye": (246.0, 102.9),
    "nose_tip": (222.5, 127.0),
    "mouth_right": (203.8, 139.8),
    "mouth_left": (245.0, 141.0),
}
# The face with a fifth of margin (rows 40-196, columns 154-292); the face itself is 86 of its 138 pixels wide.
FACE_CROP = (154, 40, 292, 196)
FACE_WIDTH_IN_CROP = 86


@dataclass
class PastedFace:
    """Where a copy of the face went: its face width in pixels and its five points in the scene's pixels."""

    width: float
    points: dict[str, tuple[float, float]]

    @property
    def centre(self) -> tuple[float, float]:
        return tuple(np.mean(list(self.points.values()), axis=0))


def face_tile(width: float, mirrored: bool = False, grey: bool = False, angle: float = 0.0):
    """The astronaut's face scaled to a face `width`, and its five points in the tile's pixels."""
    left, top, right, bottom = FACE_CROP
    scale = width / FACE_WIDTH_IN_CROP
    tile = PIL.Image.fromarray(astronaut()).crop(FACE_CROP)
    size = (round((right - left) * scale), round((bottom - top) * scale))
    tile = tile.resize(size, PIL.Image.LANCZOS)
    points = {name: ((x - left) * scale, (y - top) * scale) for name, (x, y) in ASTRONAUT_POINTS.items()}
    if mirrored:  # the image's left becomes its right: the eyes and mouth corners swap names
        tile = tile.transpose(PIL.Image.FLIP_LEFT_RIGHT)
        swap = {"right_eye": "left_eye", "left_eye": "right_eye", "mouth_right": "mouth_left",
                "mouth_left": "mouth_right", "nose_tip": "nose_tip"}  # fmt: skip
        points = {swap[name]: (size[0] - x, y) for name, (x, y) in points.items()}
    if grey:
        tile = tile.convert("L").convert("RGB")
    if angle:  # counterclockwise on screen, about the tile's centre, the canvas grown to hold it
        old_centre = (size[0] / 2, size[1] / 2)
        tile = tile.rotate(angle, resample=PIL.Image.BICUBIC, expand=True, fillcolor=(110, 110, 110))
        cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        points = {name: (tile.width / 2 + cos * (x - old_centre[0]) + sin * (y - old_centre[1]),
                         tile.height / 2 - sin * (x - old_centre[0]) + cos * (y - old_centre[1]))
                  for name, (x, y) in points.items()}  # fmt: skip
    return tile, points


def crowd(count: int = 20, size: tuple[int, int] = (2000, 1400), seed: int = 0) -> tuple[np.ndarray, list[PastedFace]]:
    """`count` copies of the face, from 32 to 300 pixels wide, every third mirrored, every fourth grey, every fifth
    turned by up to 25 degrees, on a grey gradient, none overlapping another."""
    rng = np.random.default_rng(seed)
    width, height = size
    scene = PIL.Image.fromarray(np.tile(np.linspace(60, 170, width, dtype=np.uint8)[None, :, None], (height, 1, 3)))
    placed, taken = [], []
    for index, face_width in enumerate(rng.permutation(np.geomspace(32, 300, count))):
        angle = float(rng.uniform(-25, 25)) if index % 5 == 3 else 0.0
        tile, points = face_tile(face_width, mirrored=index % 3 == 1, grey=index % 4 == 2, angle=angle)
        for _ in range(1000):
            x, y = int(rng.integers(0, width - tile.width)), int(rng.integers(0, height - tile.height))
            if all(x + tile.width < a or a + w < x or y + tile.height < b or b + h < y for a, b, w, h in taken):
                break
        else:
            raise RuntimeError("the scene is too small for its faces")
        taken.append((x, y, tile.width, tile.height))
        scene.paste(tile, (x, y))
        placed.append(PastedFace(face_width, {name: (px + x, py + y) for name, (px, py) in points.items()}))
    return np.asarray(scene), placed


def cameraman_face(height: int) -> np.ndarray:
    """skimage's cameraman (another real person), his head and shoulders, `height` pixels tall, as RGB."""
    crop = PIL.Image.fromarray(camera()).crop((160, 90, 300, 240)).convert("RGB")
    return np.asarray(crop.resize((round(crop.width * height / crop.height), height), PIL.Image.LANCZOS))


def astronaut_face(height: int) -> np.ndarray:
    crop = PIL.Image.fromarray(astronaut()).crop((150, 30, 300, 210))
    return np.asarray(crop.resize((round(crop.width * height / crop.height), height), PIL.Image.LANCZOS))


def write_crossing_video(path, fps: int = 20, seconds: float = 5.0, size: tuple[int, int] = (640, 360),
                         hidden: tuple[float, float] = (3.6, 4.6)):  # fmt: skip
    """Two different people walking across each other: the astronaut left to right in front, the cameraman right
    to left behind her (they overlap halfway), then the cameraman hidden for the `hidden` seconds (drawn nowhere,
    as behind a pillar). Returns the path and, per frame, each person's face centre x (None while hidden)."""
    import av

    width, height = size
    people = {"astronaut": astronaut_face(200), "cameraman": cameraman_face(260)}
    background = np.tile(np.linspace(80, 160, width, dtype=np.uint8)[None, :, None], (height, 1, 3))
    truth = []
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(round(fps * seconds)):
            time = index / fps
            progress = time / seconds
            centres = {
                "cameraman": 0.85 * width - 0.7 * width * progress,
                "astronaut": 0.15 * width + 0.7 * width * progress,
            }
            if hidden[0] <= time < hidden[1]:
                centres["cameraman"] = None
            frame = PIL.Image.fromarray(background)
            for name in ("cameraman", "astronaut"):  # the astronaut in front
                if centres[name] is not None:
                    tile = PIL.Image.fromarray(people[name])
                    frame.paste(tile, (round(centres[name] - tile.width / 2), round(height / 2 - tile.height / 2)))
            truth.append(centres)
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path, truth


__all__ = ["ASTRONAUT_POINTS", "PastedFace", "astronaut_face", "cameraman_face", "crowd", "face_tile",
           "write_crossing_video"]  # fmt: skip
