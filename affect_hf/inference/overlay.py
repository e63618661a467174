"""`--overlay out.mp4`: the analysed frames with each face's box, id, expression and valence/arousal drawn on."""

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

from ..files import StagedFile
from .media import Frame
from .results import FaceResult


PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180))


def label_font(width: int) -> PIL.ImageFont.FreeTypeFont | PIL.ImageFont.ImageFont:
    """Pillow's own font at a size that reads at the picture's width: 1/50 of it (20 px on a 1000 px photo)."""
    return PIL.ImageFont.load_default(size=max(12, round(width / 50)))


def draw_faces(image: PIL.Image.Image, faces: list[FaceResult]) -> PIL.Image.Image:
    """Each face's box, id, expression and valence/arousal drawn on a copy of `image`, sized to read at its width."""
    image = image.copy()
    draw = PIL.ImageDraw.Draw(image)
    font = label_font(image.width)
    line = max(2, round(image.width / 400))
    for face in faces:
        color = PALETTE[(face.face_id or 0) % len(PALETTE)]
        box = list(face.box)
        draw.rectangle(box, outline=color, width=line)
        label = f"#{face.face_id} {face.expression}"
        if face.valence is not None:
            label += f" V{face.valence:+.2f} A{face.arousal:+.2f}"
        left, top, right, bottom = draw.textbbox((box[0], box[1]), label, font=font)
        pad = max(2, (bottom - top) // 5)
        y = max(0, box[1] - (bottom - top) - 2 * pad)
        draw.rectangle([box[0], y, box[0] + right - left + 2 * pad, y + bottom - top + 2 * pad], fill=color)
        draw.text((box[0] + pad, y + pad - (top - box[1])), label, fill=(0, 0, 0), font=font)
    return image


class OverlayWriter:
    """An H.264 video of one input video's analysed frames, at its frame rate / `every_n_frames`.

    Written to a hidden file beside `path` and renamed into place when its video ends (the next input's first
    frame, or the end of the run). A run stopped in the video (Ctrl-C, a crash, a kill) keeps no overlay: the
    next writer of `path` removes the hidden file, and `affect-hf predict --resume` redoes the video with it. A
    failure while encoding removes the hidden file and publishes nothing. It shows the first video among the
    inputs; other videos and still pictures are not drawn. The caller holds `path`'s lock.
    """

    def __init__(self, path: str | os.PathLike):
        try:
            import av  # noqa: F401  (fail before any frame is read when PyAV is missing)
        except ImportError:
            raise ImportError("--overlay writes a video with PyAV: pip install 'affect-hf[video]'") from None

        self.path = Path(path)
        self.source: str | None = None
        self.container = self.stream = None
        self.staging: StagedFile | None = None
        for leftover in self.path.parent.glob(f".{self.path.name}.*{self.path.suffix}"):  # a killed writer's
            leftover.unlink(missing_ok=True)

    def add(self, frame: Frame, faces: list[FaceResult], rate: float | None, every_n_frames: int) -> None:
        import av

        if self.source is not None and frame.source != self.source:
            self.close()  # its video has ended
            return
        if frame.time is None:
            return
        try:
            if self.source is None:
                self.source = frame.source
                self.staging = StagedFile(self.path)
                self.container = av.open(str(self.staging.path), mode="w", format="mp4")
                fps = Fraction(rate or 25.0).limit_denominator(1001) / every_n_frames
                self.stream = self.container.add_stream("libx264", rate=fps)
                height, width = frame.image.shape[1:]
                self.stream.width, self.stream.height = width // 2 * 2, height // 2 * 2
                self.stream.pix_fmt = "yuv420p"
            picture = draw_faces(PIL.Image.fromarray(frame.image.permute(1, 2, 0).numpy()), faces)
            array = np.ascontiguousarray(np.asarray(picture)[: self.stream.height, : self.stream.width])
            for packet in self.stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                self.container.mux(packet)
        except Exception:
            self.discard()
            raise

    def close(self, video_ended: bool = True) -> None:
        """Finish the video and put it in place (nothing happens when no video frame came). When its video did not
        end (a run stopped in it), the overlay is not kept: a resumed run redoes the video and its overlay."""
        if self.container is None:
            return
        if not video_ended:
            self.discard()
            return
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.container.close()
            self.container = None
            self.staging.publish()
        finally:
            self.discard()

    def discard(self) -> None:
        if self.container is not None:
            try:
                self.container.close()
            except Exception:  # noqa: BLE001  (already failing; the file is being removed)
                pass
            self.container = None
        if self.staging is not None:
            self.staging.discard()
