"""Unlabeled images as a `datasets` streaming dataset: millions of faces, never decoded or held in memory up front,
sharded across processes (`split_dataset_by_node`) and DataLoader workers, resumable exactly mid-epoch.

Sources:
- a folder tree of images of any size and format (walked once, in sorted order, into a list file in the run's
  folder: the run then reads that list, so a resumed run sees the same images even if the folder changed);
- a text file listing image paths (one per line; relative paths are relative to the list's folder);
- WebDataset-style `.tar` shards (a folder of them, a glob such as `shards/*.tar`, or one file): each image member
  is a sample, other members (`.json`, `.cls` ...) are ignored. Uncompressed tars are read by member offset.

The stream yields small records (a key and where the image is); images are decoded and augmented in the
DataLoader's collate function, in the workers, from `augmentation_rng(seed, epoch, key)`, so skipping to a saved
position costs no decoding. An image that cannot be decoded is skipped and counted (`UNREADABLE_IMAGES_KEY`).
Each epoch permutes the shard order and the order within each shard from (seed, epoch), without a shuffle buffer,
which `datasets` cannot restore: a saved position (`StatefulDataLoader.state_dict()`) resumes exactly.
"""

import functools
import glob
import logging
import math
import os
import tarfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import IterableDataset
from datasets.distributed import split_dataset_by_node

from ..files import atomic_path, walk_files
from .datasets import UNREADABLE_IMAGES_KEY, collate_skipping_unreadable
from .folders import is_image_file
from .transforms import augmentation_rng, load_rgb_image


logger = logging.getLogger(__name__)
# torchdata 0.11 calls a deprecated torch function on every iterator it starts; nothing for a user to act on.
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)

# Shards per source: enough that many processes x workers each get several, few enough that a shard is a useful
# unit of reading (a shard's records are permuted in memory). A power of two divides the usual world sizes.
TARGET_NUM_SHARDS = 256


@dataclass(frozen=True)
class Shard:
    """A run of images: lines of a list file (from byte `start`) or image members of a tar (from member `start`)."""

    kind: str  # "list" or "tar"
    path: str
    start: int
    count: int
    first_key: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "start": self.start,
            "count": self.count,
            "first_key": self.first_key,
        }


@functools.lru_cache(maxsize=8)
def _tar_image_members(path: str) -> tuple[tuple[str, int, int], ...]:
    """(name, data offset, size) of a tar's image members, in order; cached, as every shard of the tar needs it."""
    with tarfile.open(path, "r:") as archive:
        return tuple(
            (member.name, member.offset_data, member.size)
            for member in archive.getmembers()
            if member.isfile() and is_image_file(member.name)
        )


COMPRESSED_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst")


def _tar_paths(source: str) -> list[str] | None:
    """The tar shards a source names (a .tar file, a glob, or a folder holding only tars), else None."""
    if source.lower().endswith(COMPRESSED_TAR_SUFFIXES):
        raise ValueError(
            f"{source}: compressed tars cannot be read by member offset; unpack it, or repack it as an uncompressed "
            ".tar (WebDataset shards are uncompressed)"
        )
    if any(char in source for char in "*?["):
        paths = sorted(glob.glob(source))
        if not paths:
            raise FileNotFoundError(f"no file matches {source}")
        if not all(path.endswith(".tar") for path in paths):
            raise ValueError(f"{source} matches files that are not .tar shards")
        return paths
    if source.endswith(".tar") and os.path.isfile(source):
        return [source]
    if os.path.isdir(source):
        entries = sorted(os.listdir(source))
        tars = [os.path.join(source, name) for name in entries if name.endswith(".tar")]
        others = [name for name in entries if is_image_file(name) or os.path.isdir(os.path.join(source, name))]
        if tars and others:
            raise ValueError(
                f"{source} holds both .tar shards ({len(tars)}) and images or folders ({len(others)}): give one kind "
                f"of source (e.g. the glob {os.path.join(source, '*.tar')} for the shards)"
            )
        if tars:
            return tars
    return None


def write_image_list(folder: str | os.PathLike, list_path: str | os.PathLike) -> int:
    """Walk `folder` in sorted order, writing the absolute path of every image file to `list_path` as it goes (a
    temporary file renamed at the end); return how many."""
    folder = Path(folder).absolute()
    count = 0
    with atomic_path(list_path) as staging, open(staging, "w", encoding="utf-8") as handle:
        for file in walk_files(folder):  # symlinked folders followed, once each
            if is_image_file(file.name):
                handle.write(f"{file}\n")
                count += 1
        if not count:
            raise ValueError(f"{folder} holds no image files")
    return count


def _count_lines(path: str) -> int:
    """Non-empty lines of a list file of image paths (UTF-8 text; anything else is an error naming the file)."""
    count = 0
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(
                    f"{path}, line {line_number}: not UTF-8 text; an image source is a folder, a text file of image "
                    "paths, or .tar shards"
                ) from None
            count += bool(raw.strip())
    return count


def _list_line_offsets(path: str, every: int, skip: int) -> list[int]:
    """Byte offsets of the non-empty lines `skip`, `skip + every`, ... of a list file (one pass)."""
    offsets, index, position = [], 0, 0
    with open(path, "rb") as handle:
        for raw in handle:
            if raw.strip():
                if index >= skip and (index - skip) % every == 0:
                    offsets.append(position)
                index += 1
            position += len(raw)
    return offsets


def _read_list_lines(path: str, start: int, count: int) -> list[str]:
    names = []
    with open(path, "rb") as handle:
        handle.seek(start)
        for raw in handle:
            line = raw.decode("utf-8").strip()
            if line:
                names.append(line)
                if len(names) == count:
                    break
    return names


# A record: where an image is. `member` is "" for a file; for a tar, `path` is the tar and the image its member.
def _list_record(path: str, base: str, key: int) -> dict[str, Any]:
    return {"key": key, "path": os.path.join(base, path), "member": "", "offset": -1, "size": -1}


def _tar_record(path: str, member: tuple[str, int, int], key: int) -> dict[str, Any]:
    name, offset, size = member
    return {"key": key, "path": path, "member": name, "offset": offset, "size": size}


def _generate_records(shards: list[dict], epoch: int, seed: int) -> Iterator[dict[str, Any]]:
    """The records of `shards`, each shard's order permuted from (seed, epoch, shard)."""
    for shard in shards:
        order = np.random.default_rng([seed, epoch, shard["first_key"]]).permutation(shard["count"])
        if shard["kind"] == "list":
            base = os.path.dirname(os.path.abspath(shard["path"]))
            names = _read_list_lines(shard["path"], shard["start"], shard["count"])
            for position in order:
                yield _list_record(names[position], base, shard["first_key"] + int(position))
        else:
            members = _tar_image_members(shard["path"])[shard["start"] : shard["start"] + shard["count"]]
            for position in order:
                yield _tar_record(shard["path"], members[position], shard["first_key"] + int(position))


def read_record_image(record: dict[str, Any]):
    """Decode a record's image (a file, or a member of a tar at its byte offset); `OSError` names it."""
    if not record["member"]:
        return load_rgb_image({"path": record["path"], "bytes": None})
    name = f"{record['path']}:{record['member']}"
    try:
        with open(record["path"], "rb") as handle:
            handle.seek(record["offset"])
            data = handle.read(record["size"])
    except OSError as error:
        raise OSError(f"Cannot read image {name}: {error}") from error
    return load_rgb_image({"path": name, "bytes": data})


class StreamCollator:
    """Decode, augment and batch stream records in the DataLoader workers; unreadable images are counted."""

    def __init__(self, transform: Callable, seed: int, epoch: int):
        self.transform, self.seed, self.epoch = transform, seed, epoch

    def __call__(self, records: list[dict]) -> dict[str, Any]:
        samples = []
        for record in records:
            try:
                image = read_record_image(record)
            except OSError as error:
                logger.warning("skipped an unreadable training image: %s", error)
                samples.append({"unreadable_image": str(error)})
                continue
            rng = augmentation_rng(self.seed, self.epoch, record["key"])
            samples.append({"pixel_values": self.transform(image, rng)})
        return collate_skipping_unreadable(samples)


class ImageSource:
    """Where unlabeled images are: the kind of source, its files, and how many images it holds.

    A folder is walked once into `list_path` (kept: a later run reads the same list).
    """

    def __init__(self, source: str | os.PathLike, list_path: str | os.PathLike):
        self.source = str(source)
        tar_paths = _tar_paths(self.source)
        if tar_paths is not None:
            self.kind, self.paths = "tar", tar_paths
            self.tar_counts = [len(_tar_image_members(path)) for path in tar_paths]
            self.total = sum(self.tar_counts)
        else:
            self.kind, self.tar_counts = "list", None
            if os.path.isdir(self.source):
                if not Path(list_path).is_file():
                    write_image_list(self.source, list_path)
                self.paths = [str(list_path)]
            elif os.path.isfile(self.source):
                self.paths = [self.source]
            else:
                raise FileNotFoundError(f"image source not found: {self.source}")
            self.total = _count_lines(self.paths[0])
        if self.total == 0:
            raise ValueError(f"{self.source} holds no images")

    def records(self, count: int) -> list[dict[str, Any]]:
        """The first `count` images, as records (key = position in the source)."""
        if self.kind == "list":
            base = os.path.dirname(os.path.abspath(self.paths[0]))
            names = _read_list_lines(self.paths[0], 0, count) if count else []
            return [_list_record(name, base, key) for key, name in enumerate(names)]
        records = []
        for path in self.paths:
            for member in _tar_image_members(path):
                if len(records) >= count:
                    return records
                records.append(_tar_record(path, member, len(records)))
        return records

    def describe(self) -> str:
        return f"{len(self.paths)} tar shard(s)" if self.kind == "tar" else f"the list {self.paths[0]}"


class ImageStream:
    """The training images of a source, as per-epoch, per-process streaming DataLoaders.

    The first `set_aside` images (in source order) are not trained on (the recipe holds them out);
    `max_images` keeps only the first images after those.
    """

    def __init__(
        self,
        source: ImageSource,
        transform: Callable,
        seed: int = 0,
        set_aside: int = 0,
        max_images: int | None = None,
    ):
        if set_aside >= source.total:
            raise ValueError(
                f"{source.source} holds {source.total} images: none is left to train on after setting {set_aside} aside"
            )
        self.source, self.transform, self.seed, self.set_aside = source, transform, seed, set_aside
        trainable = source.total - set_aside
        self.num_images = trainable if max_images is None else min(max_images, trainable)
        self.shards = self._shards()

    def _shards(self) -> list[Shard]:
        """Runs of at most `size` images (a list's lines; a tar's members, never across two tars)."""
        size = max(1, math.ceil(self.num_images / TARGET_NUM_SHARDS))
        shards: list[Shard] = []
        if self.source.kind == "list":
            path = self.source.paths[0]
            offsets = _list_line_offsets(path, every=size, skip=self.set_aside)
            for index, offset in enumerate(offsets):
                count = min(size, self.num_images - index * size)
                if count <= 0:
                    break
                shards.append(Shard("list", path, offset, count, self.set_aside + index * size))
            return shards
        skip, remaining, first_key = self.set_aside, self.num_images, 0
        for path, count in zip(self.source.paths, self.source.tar_counts, strict=True):
            start = min(skip, count)
            skip -= start
            stop = start + min(count - start, remaining)
            remaining -= stop - start
            for chunk in range(start, stop, size):
                shards.append(Shard("tar", path, chunk, min(size, stop - chunk), first_key + chunk))
            first_key += count
        return shards

    def images_per_process(self, world_size: int, num_workers: int) -> int:
        """A lower bound on the images every process reads in an epoch, whatever shards it is dealt."""
        if world_size == 1:
            return self.num_images
        counts = sorted(shard.count for shard in self.shards)
        if len(counts) % world_size == 0:  # `datasets` deals whole shards to processes
            return sum(counts[: len(counts) // world_size])
        # Otherwise each process keeps every world_size-th record of each worker's stream.
        return max(0, self.num_images // world_size - max(1, num_workers))

    def batches_per_epoch(self, batch_size: int, world_size: int, num_workers: int) -> int:
        """Batches every process can take each epoch: the same on all processes, so none waits for another."""
        return self.images_per_process(world_size, num_workers) // batch_size

    def workers(self, num_workers: int, world_size: int) -> int:
        """Workers beyond this process's share of shards would idle: `datasets` gives each worker whole shards."""
        return min(num_workers, max(1, len(self.shards) // world_size))

    def dataset(self, epoch: int, rank: int = 0, world_size: int = 1) -> IterableDataset:
        """This process's stream for `epoch`: shards in an order drawn from (seed, epoch), split by node."""
        order = np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(len(self.shards))
        shards = [self.shards[index].as_dict() for index in order]
        stream = IterableDataset.from_generator(
            _generate_records, gen_kwargs={"shards": shards, "epoch": epoch, "seed": self.seed}
        )
        return split_dataset_by_node(stream, rank=rank, world_size=world_size)

    def dataloader(self, epoch: int, rank: int, world_size: int, batch_size: int, num_workers: int):
        """A `StatefulDataLoader` over this process's stream: `state_dict()` is its exact position."""
        from torchdata.stateful_dataloader import StatefulDataLoader

        return StatefulDataLoader(
            self.dataset(epoch, rank, world_size),
            batch_size=batch_size,
            num_workers=self.workers(num_workers, world_size),
            collate_fn=StreamCollator(self.transform, self.seed, epoch),
            drop_last=False,
            # Worker seeds from the loader's own generator: drawing them from the global RNG would shift the random
            # stream of the model (MAE's masks) when a resumed run re-creates the loader mid-epoch.
            generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch),
        )

    def describe(self) -> str:
        return f"{self.num_images} streamed images from {self.source.describe()} in {len(self.shards)} shards"


class RecordDataset(torch.utils.data.Dataset):
    """Records (e.g. held-out images) as a map-style dataset of `pixel_values` (and the record's `key`)."""

    def __init__(self, records: list[dict[str, Any]], transform: Callable):
        self.records, self.transform = records, transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        return {"pixel_values": self.transform(read_record_image(record), None), "key": record["key"]}


def readable_records(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The records whose image decodes, and the errors of the others."""
    kept, errors = [], []
    for record in records:
        try:
            read_record_image(record)
        except OSError as error:
            errors.append(str(error))
        else:
            kept.append(record)
    return kept, errors


__all__ = [
    "ImageSource",
    "ImageStream",
    "RecordDataset",
    "StreamCollator",
    "UNREADABLE_IMAGES_KEY",
    "read_record_image",
    "readable_records",
    "write_image_list",
]
