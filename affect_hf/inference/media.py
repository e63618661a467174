"""Pictures and videos as one stream of frames: folders walked, each file sniffed, video decoded by PyAV as it goes.

Decoding runs in a background thread that fills a bounded queue, so the CPU decodes the next frames while the
model works on these, and memory stays flat however long the video.
"""

import logging
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch


logger = logging.getLogger(__name__)


@dataclass
class Frame:
    """One picture to analyse: `index` counts the video's decoded frames from 0 (0 for a still image); `time` is
    the frame's presentation time in seconds (None for a still image)."""

    source: str
    index: int
    time: float | None
    image: torch.Tensor  # 3 x H x W uint8 RGB


@dataclass
class MediaReport:
    """What the reader met: files read, files skipped (with the reason) and video packets that failed to decode."""

    images: int = 0
    videos: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    corrupt_packets: dict[str, int] = field(default_factory=dict)
    video_rates: dict[str, float] = field(default_factory=dict)
    cut_at_seconds: dict[str, float] = field(default_factory=dict)


def expand_paths(paths: list[str | os.PathLike], exclude: tuple[str | os.PathLike, ...] = ()) -> list[Path]:
    """Files as given, folders walked (sorted, hidden entries left out), without `exclude` (this run's own outputs,
    files or folders); a path that does not exist, or nothing at all to read, is an error."""
    excluded = [Path(path).absolute() for path in exclude]
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(
                file
                for file in path.rglob("*")
                if file.is_file() and not any(p.startswith(".") for p in file.parts[len(path.parts) :])
            )
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    files = [file for file in files if not any(file.absolute().is_relative_to(out) for out in excluded)]
    if not files:
        raise FileNotFoundError(f"no file to read in {', '.join(map(str, paths))}")
    return files


def read_still_image(path: Path) -> torch.Tensor | None:
    """The picture as 3 x H x W uint8 RGB, upright as its EXIF orientation says (phone photos), or None when PIL
    does not recognise the file as an image."""
    try:
        with PIL.Image.open(path) as image:
            image.load()
            image = PIL.ImageOps.exif_transpose(image)
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit: convert("RGB") would clip it to white
                values = np.asarray(image, dtype=np.float64)
                image = PIL.Image.fromarray(np.round(values / 257.0).clip(0, 255).astype(np.uint8))
            rgb = image.convert("RGB")
    except (PIL.UnidentifiedImageError, OSError, ValueError):
        return None
    return torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(rgb.height, rgb.width, 3).permute(2, 0, 1)


def video_frames(
    path: Path, every_n_frames: int, report: MediaReport, stop: threading.Event, max_seconds: float | None = None
) -> Iterator[Frame]:
    """Decoded frames of a video's first video stream, packet by packet: a packet that fails to decode is counted
    and skipped, and a file that breaks off ends the video, keeping every frame read before.

    Times count from the stream's start; a frame's index is its time x the frame rate (so a lost packet does not
    shift the frames after it), or its place in decoding order when the stream has no rate. With `max_seconds`,
    the video is cut there (recorded in `report.cut_at_seconds`).
    """
    import av

    source = str(path)
    with av.open(source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate) if stream.average_rate else None
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        report.video_rates[source] = rate
        decoded_count = 0
        packets = container.demux(stream)
        broken = False
        while not stop.is_set() and not broken:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as error:
                logger.warning("%s: the file breaks off after %d frames (%s)", source, decoded_count, error)
                report.corrupt_packets[source] = report.corrupt_packets.get(source, 0) + 1
                packet, broken = None, True  # flush: the frames the decoder still holds are kept
            try:
                decoded = packet.decode() if packet is not None else stream.codec_context.decode(None)
            except av.error.FFmpegError as error:
                logger.warning(
                    "%s: a packet after %d frames does not decode (%s); skipped", source, decoded_count, error
                )
                report.corrupt_packets[source] = report.corrupt_packets.get(source, 0) + 1
                continue
            for frame in decoded:
                time = float(frame.time) - start if frame.time is not None else None
                if time is None and rate:
                    time = decoded_count / rate
                if max_seconds is not None and time is not None and time >= max_seconds:
                    report.cut_at_seconds[source] = max_seconds
                    return
                if decoded_count % every_n_frames == 0:
                    index = round(time * rate) if time is not None and rate else decoded_count
                    image = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
                    yield Frame(source, index, time, image)
                decoded_count += 1


def is_video(path: Path) -> str | None:
    """None when PyAV opens the file and finds a video stream in it, else the reason it is not a video."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return "no video stream"
            return None
    except av.error.FFmpegError as error:
        return f"neither an image nor a video PyAV can decode ({error.strerror or error})"


def iter_frames(
    files: list[Path], every_n_frames: int, report: MediaReport, stop: threading.Event, max_seconds: float | None = None
) -> Iterator[Frame]:
    """Every file's frames in order; unreadable files are logged, recorded in `report.skipped` and passed over."""
    for path in files:
        if stop.is_set():
            return
        image = read_still_image(path)
        if image is not None:
            report.images += 1
            yield Frame(str(path), 0, None, image)
            continue
        try:
            reason = is_video(path)
        except ImportError:
            reason = "not an image, and reading videos needs PyAV: pip install affect-hf[video]"
        if reason is not None:
            logger.warning("skipped %s: %s", path, reason)
            report.skipped.append((str(path), reason))
            continue
        report.videos += 1
        try:
            yield from video_frames(path, every_n_frames, report, stop, max_seconds)
        except Exception as error:  # noqa: BLE001  (a broken file must not end the run; the frames before are kept)
            logger.warning("%s: reading stopped (%s: %s)", path, type(error).__name__, error)
            report.corrupt_packets[str(path)] = report.corrupt_packets.get(str(path), 0) + 1


_END = object()


def prefetched_frames(
    files: list[Path], every_n_frames: int, report: MediaReport, max_queued: int, max_seconds: float | None = None
) -> Iterator[Frame]:
    """`iter_frames` run in a background thread, at most `max_queued` frames ahead of the consumer."""
    frames: queue.Queue = queue.Queue(maxsize=max_queued)
    stop = threading.Event()

    def hand_over(item) -> None:
        """Put `item` in the queue unless the consumer has gone (then drop it: nobody will read it)."""
        while not stop.is_set():
            try:
                frames.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def produce() -> None:
        try:
            for frame in iter_frames(files, every_n_frames, report, stop, max_seconds):
                hand_over(frame)
            hand_over(_END)
        except BaseException as error:  # noqa: BLE001  (handed to the consumer, raised there)
            hand_over(error)

    thread = threading.Thread(target=produce, name="affect-hf-decoder", daemon=True)
    thread.start()
    try:
        while True:
            item = frames.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
