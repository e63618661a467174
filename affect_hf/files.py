"""Files the package writes and reads: atomic writes (a reader, or a crash, sees the old file or folder or the new
one, never half of one), modes that follow the umask, one writer per output (a lock), and folder walks.
"""

import hashlib
import inspect
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


logger = logging.getLogger(__name__)

# The umask, read once when the package is imported (in the main thread: `os.umask` is process-wide, and reading it
# means setting it, which would race with threads creating files). Staged files and folders (`mkstemp`, `mkdtemp`)
# are private until published; they then get the modes any other file of the user's would: 0644 / 0755 under 022.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
FOLDER_MODE = 0o777 & ~_UMASK


def follow_umask(path: str | os.PathLike) -> None:
    """Give a staged file, or a staged folder and everything in it, the modes the umask asks for."""
    path = Path(path)
    if path.is_dir():
        os.chmod(path, FOLDER_MODE)
        for directory, folders, files in os.walk(path):
            for name in folders:
                os.chmod(os.path.join(directory, name), FOLDER_MODE)
            for name in files:
                os.chmod(os.path.join(directory, name), FILE_MODE)
    else:
        os.chmod(path, FILE_MODE)


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
        follow_umask(self.path)
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


def staging_folder(destination: str | os.PathLike) -> Path:
    """A hidden, private folder beside `destination` (`.<name>.tmp-*`) to build it in; `publish_folder` puts it in
    place, `remove_stale_staging` clears what a crash left."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{destination.name}.tmp-", dir=destination.parent))


def publish_folder(staging: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """A finished staging folder, with the umask's modes, moved over `destination` (`replace_directory`)."""
    follow_umask(staging)
    replace_directory(staging, destination)
    return Path(destination)


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


class OutputInUseError(OSError):
    """Another run holds the output's lock (its pid named)."""


class OutputLock:
    """One writer per output: an advisory lock on `.<name>.lock` beside the output (a file or a folder), taken at once
    or refused with the holder's pid, which sits in `.<name>.lock.pid` (filelock empties the lock file on every
    attempt). The kernel frees the lock when its holder dies, so a run after a kill simply takes it. The lock is
    advisory and local: it orders runs on one machine, not on a network filesystem shared by several.
    """

    def __init__(self, target: str | os.PathLike):
        self.target = Path(target)
        self.path = self.target.parent / f".{self.target.name}.lock"
        self.pid_path = self.path.with_name(self.path.name + ".pid")
        self.lock = None

    def acquire(self) -> "OutputLock":
        from filelock import FileLock, Timeout

        # A lock that the kernel frees when its holder dies (filelock >= 4 would otherwise fall back to a lock file's
        # mere existence where the filesystem has no locks, which a killed run leaves behind).
        strict = {"fallback_to_soft": False} if "fallback_to_soft" in inspect.signature(FileLock).parameters else {}
        lock = FileLock(self.path, timeout=0, **strict)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except Timeout:
            try:
                holder = f"pid {int(self.pid_path.read_text(encoding='utf-8'))}"
            except (OSError, ValueError):
                holder = "a process whose pid is not recorded"
            raise OutputInUseError(
                f"{self.target} is being written by another run ({holder}; lock {self.path}): wait for it, or choose "
                "another output"
            ) from None
        except OSError as error:  # no folder for the lock: the output cannot be written there either
            raise PermissionError(f"{self.target} is not writable: {error}") from None
        self.lock = lock
        write_text_atomically(self.pid_path, str(os.getpid()))
        return self

    def release(self) -> None:
        if self.lock is None:
            return
        try:
            if self.pid_path.read_text(encoding="utf-8").strip() == str(os.getpid()):
                self.pid_path.unlink()
        except OSError:
            pass
        self.lock.release()
        self.lock = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def walk_files(folder: str | os.PathLike) -> Iterator[Path]:
    """Every file below `folder`, top-down as `os.walk` goes (a folder's files by name, then its subfolders by name),
    hidden entries (a leading ".") left out.

    Symlinked folders are followed, each folder once: a link back to a folder already walked (a loop, or a second
    link to the same folder) is skipped with a warning.
    """
    seen: set[tuple[int, int]] = set()

    def visit(directory: str) -> Iterator[Path]:
        status = os.stat(directory)
        if (status.st_dev, status.st_ino) in seen:
            logger.warning("skipped %s: a folder already walked (a symlink loop, or a second link to it)", directory)
            return
        seen.add((status.st_dev, status.st_ino))
        with os.scandir(directory) as entries:
            listed = sorted((entry for entry in entries if not entry.name.startswith(".")), key=lambda e: e.name)
        folders = []
        for entry in listed:
            if entry.is_dir():  # follows symlinks
                folders.append(entry.path)
            elif entry.is_file():
                yield Path(entry.path)
            elif entry.is_symlink():
                logger.warning("skipped %s: a symlink to nothing", entry.path)
        for path in folders:
            try:
                yield from visit(path)
            except PermissionError as error:
                logger.warning("skipped %s: %s", path, error)

    yield from visit(os.fspath(folder))
