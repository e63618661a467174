"""Synthetic videos of moving faces, built from a real face photo, for tests and benchmarks of video analysis."""

import os
from pathlib import Path

import numpy as np
import PIL.Image

from ..files import atomic_path


def write_face_video(
    path: str | os.PathLike,
    face: np.ndarray,
    num_frames: int = 48,
    fps: int = 12,
    size: tuple[int, int] = (384, 216),
    num_faces: int = 2,
    face_height: int | None = None,
    codec: str = "libx264",
) -> Path:
    """An H.264 (or `codec`) video of `num_faces` copies of `face` (an H x W x 3 uint8 photo of one face, cropped
    close) drifting side by side over a grey gradient; the second copy is mirrored, so the people look different.

    Each face stays in its own band of the frame and moves smoothly, so a tracker must keep one id per band. Needs
    PyAV (`pip install affect-hf[video]`). The file is written atomically.
    """
    import av

    width, height = size
    face_height = face_height or int(height * 0.8)
    tile = PIL.Image.fromarray(face).resize((face_height * face.shape[1] // face.shape[0], face_height))
    tiles = [tile if index % 2 == 0 else tile.transpose(PIL.Image.FLIP_LEFT_RIGHT) for index in range(num_faces)]
    band = width / num_faces
    background = np.tile(np.linspace(70, 150, width, dtype=np.uint8)[None, :, None], (height, 1, 3))
    path = Path(path)
    with atomic_path(path) as staging:
        with av.open(str(staging), mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for index in range(num_frames):
                frame = PIL.Image.fromarray(background)
                phase = 2 * np.pi * index / max(num_frames, 1)
                for number, picture in enumerate(tiles):
                    slack_x, slack_y = band - picture.width, height - picture.height
                    x = band * number + slack_x * (0.5 + 0.4 * np.sin(phase + number * np.pi))
                    y = slack_y * (0.5 + 0.4 * np.cos(phase))
                    frame.paste(picture, (int(x), int(y)))
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(frame), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path
