"""Pictures and videos as one stream of frames: folders walked, each file sniffed, video decoded by PyAV as it goes;
pictures already in memory (PIL images, arrays) join the stream as they are.

Decoding runs in a background thread that fills a bounded queue, so the CPU decodes the next frames while the
model works on these, and memory stays flat however long the video.
"""

import io
import logging
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from ..data.pictures import MAX_PIXELS, read_picture, rgb_tensor
from ..faces.detection import as_image_tensor
from ..files import walk_files


logger = logging.getLogger(__name__)


@dataclass
class Frame:
    """One picture to analyse: `index` counts the video's decoded frames from 0 in presentation order (0 for a still
    image); `time` is the frame's own presentation time in seconds (None for a still image); `item` is the input it
    comes from."""

    source: str
    index: int
    time: float | None
    image: torch.Tensor  # 3 x H x W uint8 RGB
    item: int = 0  # the input it comes from: its position in the list `expand_inputs` gave


# An input with this suffix is a list of the paths to analyse, one per line.
PATH_LIST_SUFFIX = ".txt"
# A batch of frames, and the frames queued ahead of it (besides the one being decoded), hold at most about this
# many pixels (200 MB), whatever the batch size: a folder of 100-megapixel photos is analysed one at a time. A
# larger picture goes alone.
BATCH_PIXELS = 1 << 26


@dataclass
class Picture:
    """A picture given in memory rather than as a file; `name` is its `source` in the table (`<image N>`)."""

    name: str
    image: torch.Tensor  # 3 x H x W uint8 RGB


@dataclass
class DatasetRow:
    """One row of a `datasets` dataset's Image or Video column, read when its turn comes (`dataset_rows`)."""

    dataset: Any  # a `datasets.Dataset` whose column is cast to decode=False: {"bytes", "path"} per row
    column: str
    index: int
    name: str  # its `source` in the table: NAME[SPLIT][INDEX]
    size: int = 0  # bytes, for sharing the rows out among processes

    def __str__(self) -> str:
        return self.name

    def open(self) -> io.BytesIO | Path:
        """The row's file: its bytes, or the path it names when the dataset keeps no bytes."""
        stored = self.dataset[self.index][self.column]
        if stored is None:
            raise OSError("the row holds no image or video")
        if stored.get("bytes") is not None:
            return io.BytesIO(stored["bytes"])
        if stored.get("path") and Path(stored["path"]).is_file():
            return Path(stored["path"])
        raise OSError(f"the row holds no bytes, and its path {stored.get('path')!r} is not a file")


def dataset_rows(dataset: Any, column: str | None = None, name: str = "dataset") -> list[DatasetRow]:
    """The rows of a `datasets.Dataset` as inputs, its Image or Video `column` read by this package's own readers
    (the pixel limit, EXIF orientation, PyAV) rather than decoded by `datasets`. Without `column`, the dataset's one
    Image or Video column. Rows are named `NAME[INDEX]` in the table."""
    import datasets
    import pyarrow.compute as pc

    media = [key for key, feature in dataset.features.items() if isinstance(feature, (datasets.Image, datasets.Video))]
    if column is None:
        if len(media) != 1:
            raise ValueError(
                f"{name} has {len(media)} Image or Video columns ({', '.join(media) or 'none'}): name one with column"
            )
        column = media[0]
    if column not in dataset.column_names:
        raise ValueError(f"{name} has no column {column!r}; its columns: {', '.join(dataset.column_names)}")
    if column not in media:
        raise ValueError(f"{name}'s column {column!r} is {dataset.features[column]}, not an Image or Video column")
    kind = type(dataset.features[column])
    # The rows as they are now (a select, filter or shuffle leaves an index mapping over the table: made real here).
    dataset = dataset.flatten_indices().cast_column(column, kind(decode=False))
    # Each row's bytes, read from the memory-mapped Arrow table chunk by chunk: no image is copied into Python.
    sizes = [size for chunk in dataset.data.column(column).chunks
             for size in pc.fill_null(pc.binary_length(pc.struct_field(chunk, "bytes")), 0).to_pylist()]  # fmt: skip
    return [DatasetRow(dataset, column, index, f"{name}[{index}]", size) for index, size in enumerate(sizes)]


def load_dataset_rows(name_or_path: str, split: str = "train", column: str | None = None) -> list[DatasetRow]:
    """`dataset_rows` of a dataset on disk (`save_to_disk`, or files `datasets.load_dataset` reads) or on the Hub."""
    import datasets

    path = Path(name_or_path)
    if path.is_dir() and any((path / marker).is_file() for marker in ("state.json", "dataset_dict.json")):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"{name_or_path} has no split {split!r}; its splits: {', '.join(loaded)}")
            loaded = loaded[split]
    else:
        loaded = datasets.load_dataset(str(name_or_path), split=split)
    return dataset_rows(loaded, column, f"{path.name if path.exists() else name_or_path}[{split}]")


def input_size(item: "Path | Picture | DatasetRow") -> int:
    """An input's bytes (0 for a picture in memory): what sharing inputs out among processes weighs."""
    if isinstance(item, Path):
        return item.stat().st_size
    return getattr(item, "size", 0)


MediaInput = str | os.PathLike | PIL.Image.Image | np.ndarray | torch.Tensor | DatasetRow


@dataclass
class MediaReport:
    """What the reader met: files read, files skipped (with the reason) and video packets that failed to decode."""

    images: int = 0
    videos: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    corrupt_packets: dict[str, int] = field(default_factory=dict)
    video_rates: dict[str, float] = field(default_factory=dict)
    cut_at_seconds: dict[str, float] = field(default_factory=dict)
    # Videos that end before their header says (a truncated file): (seconds read, seconds declared).
    cut_short: dict[str, tuple[float, float]] = field(default_factory=dict)


def expand_inputs(
    inputs: MediaInput | Sequence[MediaInput], exclude: tuple[str | os.PathLike, ...] = ()
) -> list[Path | Picture | DatasetRow]:
    """What there is to read, in the order given: files and dataset rows (`dataset_rows`) as they are, folders
    walked (sorted, hidden entries left out, symlinked folders followed once each), `.txt` files as lists of paths
    (`read_path_list`), pictures in memory (PIL images, H x W x 3 uint8 arrays, 3 x H x W uint8 tensors) named
    `<image N>` by their position among `inputs`. `exclude` (this run's own outputs, files or folders) is left
    out; a path that does not exist, or nothing at all to read, is an error."""
    if isinstance(inputs, (str, os.PathLike, PIL.Image.Image, np.ndarray, torch.Tensor, DatasetRow)):
        inputs = [inputs]
    excluded = [Path(path).absolute() for path in exclude]
    items: list[Path | Picture | DatasetRow] = []
    for position, item in enumerate(inputs):
        if isinstance(item, DatasetRow):
            items.append(item)
            continue
        if not isinstance(item, (str, os.PathLike)):
            items.append(Picture(f"<image {position}>", as_image_tensor(item)))
            continue
        path = Path(item)
        if path.is_file() and path.suffix.lower() == PATH_LIST_SUFFIX:
            files = [file for listed in read_path_list(path) for file in _files_of(listed)]
        else:
            files = _files_of(path)
        items += [file for file in files if not any(file.absolute().is_relative_to(out) for out in excluded)]
    if not items:
        named = ", ".join(str(item) for item in inputs if isinstance(item, (str, os.PathLike)))
        raise FileNotFoundError(f"no file to read in {named or 'the inputs'}")
    return items


def _files_of(path: Path) -> list[Path]:
    if path.is_dir():
        return list(walk_files(path))
    if path.is_file():
        return [path]
    raise FileNotFoundError(f"no such file or folder: {path}")


def read_path_list(path: Path) -> list[Path]:
    """The files and folders a `.txt` list names, one per line (relative to the list's folder; blank lines and
    `#` comments skipped); a line naming nothing is an error naming the list and the line."""
    listed = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        named = Path(entry).expanduser()
        named = named if named.is_absolute() else Path(os.path.normpath(path.parent / named))
        if not named.exists():
            raise FileNotFoundError(f"{path}:{number}: no such file or folder: {entry}")
        listed.append(named)
    return listed


def read_still_image(
    path: Path | str | io.BytesIO, max_pixels: int = MAX_PIXELS, name: str | None = None
) -> torch.Tensor | None:
    """The picture as 3 x H x W uint8 RGB, upright as its EXIF orientation says (phone photos); None when the file
    is no picture (it may be a video). A picture that is refused (beyond `max_pixels`) or broken raises `OSError`."""
    try:
        rgb = read_picture(path, max_pixels, name=name)
    except (PIL.UnidentifiedImageError, ValueError):
        return None
    with rgb:  # closed once copied (a multi-frame file, e.g. a camera's MPO, keeps its file open until then)
        return rgb_tensor(rgb)


def video_frames(
    path: Path | io.BytesIO,
    every_n_frames: int,
    report: MediaReport,
    stop: threading.Event,
    max_seconds: float | None = None,
    item: int = 0,
    source: str | None = None,
) -> Iterator[Frame]:
    """Decoded frames of a video's first video stream, packet by packet: a packet that fails to decode is counted
    and skipped, and a file that breaks off ends the video, keeping every frame read before.

    A frame's index is its place in the order the decoder gives frames (presentation order): 0, 1, 2 ..., unique
    and increasing, also for variable frame rates and B-frames; `every_n_frames` counts those. Its time is its own
    timestamp, (pts - the stream's start) x time base, in seconds (from the average rate only for a frame without
    one), so a lost packet shows as a gap in time, not in the indices. With `max_seconds`,
    the video is cut there (recorded in `report.cut_at_seconds`). A video whose frames end more than a frame before
    the duration its header declares is reported as cut short (`report.cut_short`), with the frames it had.
    """
    import av

    source = source or str(path)
    with av.open(_rewound(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate) if stream.average_rate else None
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        report.video_rates[source] = rate
        declared = float(stream.duration * stream.time_base) if stream.duration else None
        decoded_count, last_time = 0, None
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
                    image = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
                    yield Frame(source, decoded_count, time, image, item)
                decoded_count += 1
                last_time = time if time is not None else last_time
        if stop.is_set() or not (declared and rate):
            return
        read = last_time + 1 / rate if last_time is not None else 0.0
        if read < declared - 1.5 / rate:
            logger.warning("%s: cut short: its frames end at %.2f s, its header says %.2f s", source, read, declared)
            report.cut_short[source] = (read, declared)


def _rewound(path: Path | io.BytesIO) -> str | io.BytesIO:
    """What PyAV and PIL open: a path as a string, or bytes in memory from their start."""
    if isinstance(path, io.BytesIO):
        path.seek(0)
        return path
    return str(path)


def is_video(path: Path | io.BytesIO) -> str | None:
    """None when PyAV opens the file and finds a video stream in it, else the reason it is not a video."""
    import av

    try:
        with av.open(_rewound(path)) as container:
            if not container.streams.video:
                return "no video stream"
            return None
    except av.error.FFmpegError as error:
        return f"neither an image nor a video PyAV can decode ({error.strerror or error})"


def iter_frames(
    items: list[Path | Picture | DatasetRow],
    every_n_frames: int,
    report: MediaReport,
    stop: threading.Event,
    max_seconds: float | None = None,
    max_pixels: int = MAX_PIXELS,
    first_item: int = 0,
) -> Iterator[Frame]:
    """Every input's frames in order; unreadable files are logged, recorded in `report.skipped` and passed over.
    Frames carry their input's position, counted from `first_item` (where a resumed run starts).

    A file that is a picture is never handed to the video reader, also when it is refused (PyAV would open a PNG
    as a one-frame video).
    """
    for item, path in enumerate(items, start=first_item):
        if stop.is_set():
            return
        if isinstance(path, Picture):
            report.images += 1
            yield Frame(path.name, 0, None, path.image, item)
            continue
        source = str(path)
        try:
            readable = path.open() if isinstance(path, DatasetRow) else path
            image = read_still_image(_rewound(readable), max_pixels, source)
        except OSError as error:
            reason = str(error).removeprefix(f"{source}: ")
            logger.warning("skipped %s: %s", source, reason)
            report.skipped.append((source, reason))
            continue
        if image is not None:
            report.images += 1
            yield Frame(source, 0, None, image, item)
            continue
        try:
            reason = is_video(readable)
        except ImportError:
            reason = "not an image, and reading videos needs PyAV: pip install affect-hf[video]"
        if reason is not None:
            logger.warning("skipped %s: %s", source, reason)
            report.skipped.append((source, reason))
            continue
        report.videos += 1
        try:
            yield from video_frames(readable, every_n_frames, report, stop, max_seconds, item, source)
        except Exception as error:  # noqa: BLE001  (a broken file must not end the run; the frames before are kept)
            logger.warning("%s: reading stopped (%s: %s)", source, type(error).__name__, error)
            report.corrupt_packets[source] = report.corrupt_packets.get(source, 0) + 1


_END = object()


def frame_pixels(item: object) -> int:
    return item.image.shape[-2] * item.image.shape[-1] if isinstance(item, Frame) else 0


def prefetched_frames(
    items: list[Path | Picture],
    every_n_frames: int,
    report: MediaReport,
    max_queued: int,
    max_seconds: float | None = None,
    max_pixels: int = MAX_PIXELS,
    first_item: int = 0,
) -> Iterator[Frame]:
    """`iter_frames` run in a background thread, at most `max_queued` frames ahead of the consumer."""
    frames: queue.Queue = queue.Queue(maxsize=max_queued)
    stop = threading.Event()
    queued_pixels, taken = [0], threading.Condition()

    def hand_over(item) -> None:
        """Put `item` in the queue unless the consumer has gone (then drop it: nobody will read it). A frame waits
        while the queue holds other frames and it would bring the queue beyond `BATCH_PIXELS`."""
        with taken:
            while not stop.is_set() and queued_pixels[0] and queued_pixels[0] + frame_pixels(item) > BATCH_PIXELS:
                taken.wait(0.1)
            queued_pixels[0] += frame_pixels(item)
        while not stop.is_set():
            try:
                frames.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def produce() -> None:
        try:
            for frame in iter_frames(items, every_n_frames, report, stop, max_seconds, max_pixels, first_item):
                hand_over(frame)
            hand_over(_END)
        except BaseException as error:  # noqa: BLE001  (handed to the consumer, raised there)
            hand_over(error)

    thread = threading.Thread(target=produce, name="affect-hf-decoder", daemon=True)
    thread.start()
    try:
        while True:
            item = frames.get()
            with taken:
                queued_pixels[0] -= frame_pixels(item)
                taken.notify()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
