"""Atomic writes: a reader (or a crash) sees the old file or folder or the new one, never half of one."""

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file, read in 1 MiB blocks (checkpoints and ONNX files are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class StagedFile:
    """A hidden temporary file beside `path` (same suffix, for writers that choose the format by it), for a writer
    that lives across many calls: `publish()` renames it over `path`, `discard()` removes it."""

    def __init__(self, path: str | os.PathLike):
        self.target = Path(path)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(
            dir=self.target.parent, prefix=f".{self.target.name}.", suffix=self.target.suffix
        )
        os.close(handle)
        self.path = Path(name)

    def publish(self) -> Path:
        os.chmod(self.path, 0o644)
        os.replace(self.path, self.target)
        return self.target

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` to write to: renamed over `path` when the block succeeds, deleted if it fails."""
    staged = StagedFile(path)
    try:
        yield staged.path
        staged.publish()
    finally:
        staged.discard()


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Write to a temporary file beside `path`, then rename it over `path`."""
    with atomic_path(path) as staging:
        staging.write_text(text, encoding="utf-8")


def retired_name(destination: Path) -> Path:
    return destination.with_name(f".{destination.name}.old")


def replace_directory(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Move a finished folder into place (over a folder, or over a file of the same name).

    The old folder is first renamed aside, so a crash between the two renames leaves it recoverable under
    `.<name>.old`; `restore_directory` puts it back.
    """
    source, destination = Path(source), Path(destination)
    restore_directory(destination)
    retired = retired_name(destination)
    _remove(retired)
    if destination.exists():
        os.replace(destination, retired)
    os.replace(source, destination)
    _remove(retired)


def _remove(path: Path) -> None:
    """A folder, or a file that an older layout left where a folder now goes."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def restore_directory(destination: str | os.PathLike) -> None:
    """Undo a replacement interrupted between its two renames (the folder missing, its retired copy present)."""
    destination = Path(destination)
    retired = retired_name(destination)
    if not destination.exists() and retired.exists():
        os.replace(retired, destination)


def remove_stale_staging(parent: str | os.PathLike, name: str) -> None:
    """Delete staging folders `.<name>.tmp*` that a crashed save left behind."""
    for leftover in Path(parent).glob(f".{name}.tmp*"):
        shutil.rmtree(leftover, ignore_errors=True)
