"""The output layout of every analysis table, and its writer: crash-safe, resumable, one writer per output.

An output path ending in `.csv` is one CSV file. Any other output (`affect.parquet`, or a name without a suffix)
is a Parquet *folder* of part files, `part-000000.parquet`, ..., all of one schema (`results.table_schema`), which
`pandas.read_parquet(folder)` and `datasets.load_dataset("parquet", data_dir=folder)` read as one table.

What a kill leaves: the output is always a readable table of the rows finished so far. CSV rows are appended and
flushed batch by batch (whole lines, in one write each); Parquet rows land in a new part file every
`rows_per_part` rows or `flush_seconds` seconds, each part written under a hidden name and renamed into the
folder, so a part is whole or absent. Beside the rows, a hidden progress record (`.<name>.progress.json` beside a
CSV, `.progress.json` inside a folder; readers skip hidden files) names how many inputs are finished and where
their rows end. `resume=True` keeps those rows, cuts away the rest (the rows of an input that was not finished)
and continues with the next input; an output that exists is otherwise refused unless `overwrite=True`. A lock
(`files.OutputLock`) keeps a second run out while one writes.

A run of several processes (`inference.corpus`) writes one *shard* per process into the folder: its parts are
`part-<shard>-000000.parquet`, ..., its progress record `.progress-<shard>.json`, which also lists the inputs the
shard was given. The folder still reads as one table.
"""

import csv
import io
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..files import OutputLock, follow_umask, write_text_atomically


CSV_SUFFIX = ".csv"
PARQUET_SUFFIX = ".parquet"
PART_NAME = "part-{number:06d}.parquet"
SHARD_PART_NAME = "part-{shard}-{number:06d}.parquet"
PROGRESS_FORMAT = 1


def is_csv_output(path: str | os.PathLike) -> bool:
    """The layout of an output, from its name: `.csv` is one file, anything else a Parquet folder."""
    return Path(path).suffix.lower() == CSV_SUFFIX


def check_table_path(path: str | os.PathLike) -> Path:
    """An output name that fits the layout; a wrong one fails before any work is done."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in ("", CSV_SUFFIX, PARQUET_SUFFIX):
        raise ValueError(f"{path}: an output is FILE.csv, or a Parquet folder (FOLDER.parquet or FOLDER)")
    if is_csv_output(path) and path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; a CSV output is a file")
    if not is_csv_output(path) and path.is_file():
        raise NotADirectoryError(f"{path} is a file; a Parquet output is a folder of part files (or name a .csv)")
    return path


def progress_path(path: str | os.PathLike, shard: str | None = None) -> Path:
    path = Path(path)
    if shard is not None:
        return path / f".progress-{shard}.json"
    return path.with_name(f".{path.name}.progress.json") if is_csv_output(path) else path / ".progress.json"


def shard_records(path: str | os.PathLike) -> dict[str | None, dict[str, Any]]:
    """Every progress record of a Parquet folder, by shard (None: a one-process run's)."""
    path = Path(path)
    records = {}
    for record in sorted(path.glob(".progress*.json")) if path.is_dir() else []:
        match = re.fullmatch(r"\.progress(?:-(.+))?\.json", record.name)
        if match:
            records[match.group(1)] = read_record(record)
    return records


def clear_table_folder(path: Path) -> None:
    """A table folder's own files removed (its parts and progress records), before it is written anew."""
    for entry in path.iterdir():
        if _is_part(entry.name) or re.fullmatch(r"\.progress(-.+)?\.json", entry.name):
            entry.unlink()


def check_output(path: str | os.PathLike, resume: bool, overwrite: bool) -> dict[str, Any] | None:
    """Whether a run may write `path`, before any work is done; returns the progress record to resume from.

    An existing output needs `resume` (and a progress record) or `overwrite`; a folder that holds other files than
    a table's is never replaced.
    """
    path = check_table_path(path)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: continue the output, or replace it")
    if not path.exists():
        return None
    progress = read_progress(path)
    if resume:
        if progress is None and not (not is_csv_output(path) and shard_records(path)):
            raise ValueError(
                f"{path} was not written by a resumable run (it has no progress record): replace it with "
                "--overwrite, or choose another output"
            )
        return progress
    if not is_csv_output(path):
        foreign = sorted(
            entry.name for entry in path.iterdir() if not entry.name.startswith(".") and not _is_part(entry.name)
        )
        if foreign:
            raise FileExistsError(
                f"{path} holds files that are not part of a table ({', '.join(foreign[:3])}"
                f"{' ...' if len(foreign) > 3 else ''}): it is not replaced; choose another output"
            )
        if not any(not entry.name.startswith(".") for entry in path.iterdir()):
            return None  # an empty folder: a new table
    if not overwrite:
        raise FileExistsError(
            f"{path} exists: pass --resume to continue it, --overwrite to replace it, or choose another output"
        )
    return None


def read_progress(path: str | os.PathLike) -> dict[str, Any] | None:
    """The progress record of an output, None when there is none (not written by a resumable run)."""
    record = progress_path(path)
    return read_record(record) if record.is_file() else None


def read_record(record: Path) -> dict[str, Any]:
    """A progress record's contents; a file that is not one is a one-line error naming it."""
    try:
        return json.loads(record.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{record} is not a progress record ({error}): replace the output with --overwrite") from None


class TableWriter:
    """Rows of an output in order, input after input; see the module's docstring for what a kill leaves.

    The caller writes each input's rows (`write`), says when inputs are finished (`finish_inputs(count)`: the first
    `count` inputs have all their rows written), calls `flush()` after each batch and `close()` at the end.
    `inputs_done` is where a resumed run starts. `fingerprint` names the run (model, options, inputs): a resume
    with another is refused, naming what changed.

    With `shard` (a Parquet folder only), the writer writes that shard of a run of several processes and `inputs`
    are the positions, among all the run's inputs, of the ones it was given; the caller has checked the output
    (`check_output`) and holds its lock, or `lock=False` says another process of the run does. `stats` (what
    the caller counted) go into the progress record.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        schema: pa.Schema,
        fingerprint: dict[str, Any] | None = None,
        resume: bool = False,
        overwrite: bool = False,
        rows_per_part: int = 8192,
        flush_seconds: float = 10.0,
        lock: OutputLock | None | bool = None,
        shard: str | None = None,
        inputs: list[int] | None = None,
    ):
        self.path, self.schema = check_table_path(path), schema
        self.fingerprint = fingerprint or {}
        self.rows_per_part, self.flush_seconds = rows_per_part, flush_seconds
        self.csv = is_csv_output(self.path)
        if shard is not None and (self.csv or not re.fullmatch(r"[0-9a-z-]+", shard)):
            raise ValueError(f"{self.path}: a shard is a part of a Parquet folder, named by digits, letters and -")
        self.shard, self.inputs = shard, inputs
        self.stats: dict[str, Any] = {}
        # The lock a caller already holds (taken before its slow start) stays the caller's to release.
        self.own_lock = lock is None
        self.lock = OutputLock(self.path).acquire() if lock is None else lock
        try:
            self._open(resume, overwrite)
        except BaseException:
            self._release()
            raise

    # ------------------------------------------------------------------ opening

    def _open(self, resume: bool, overwrite: bool) -> None:
        self.buffer: list[dict[str, Any]] = []
        # (inputs finished, rows then, CSV bytes then): written, but maybe not yet on disk; `done` is on disk.
        self.boundaries: list[tuple[int, int, int]] = []
        self.complete = False
        self.last_flush = time.monotonic()
        if self.shard is None:
            progress = check_output(self.path, resume, overwrite)
        else:
            record = progress_path(self.path, self.shard)
            progress = read_record(record) if resume and record.is_file() else None
        self._remove_leftovers()
        if progress is None:
            self._create()
            return
        changed = [key for key in sorted({*progress["fingerprint"], *self.fingerprint})
                   if progress["fingerprint"].get(key) != self.fingerprint.get(key)]  # fmt: skip
        if changed:
            raise ValueError(
                f"cannot resume {self.path}: this run differs from the one that wrote it ({', '.join(changed)} "
                "changed); run it as it was, or replace the output with --overwrite"
            )
        self._reopen(progress)

    def _remove_leftovers(self) -> None:
        """What a killed run left half-done (under the lock, so no other run's): part files being written, and the
        staging files of earlier versions' writers."""
        if self.csv:
            for leftover in self.path.parent.glob(f".{self.path.name}.*{CSV_SUFFIX}"):
                leftover.unlink(missing_ok=True)
        else:
            for pattern in (f".{self.path.name}.tmp-*", f".{self.path.name}.*{PARQUET_SUFFIX}"):
                for leftover in self.path.parent.glob(pattern):
                    _remove_tree(leftover)
            if self.path.is_dir():
                for leftover in self.path.glob(".part-*"):
                    if self._is_own_part(leftover.name.removeprefix(".").removesuffix(".tmp")):
                        leftover.unlink(missing_ok=True)

    def _create(self) -> None:
        self.record_path.unlink(missing_ok=True)  # first: a kill while replacing leaves no stale record
        if self.csv:
            header = io.StringIO()
            csv.writer(header).writerow(self.schema.names)
            self.file = open(self.path, "wb", buffering=0)  # noqa: SIM115  (closed in close())
            self.bytes = 0
            self._append(header.getvalue().encode("utf-8"))
            follow_umask(self.path)
            self.parts: list[list] = []
        else:
            if self.path.is_dir() and self.shard is None:  # replacing a table (`check_output` found only its files)
                clear_table_folder(self.path)
            self.path.mkdir(parents=True, exist_ok=True)
            self.parts = []
            self._write_part([])  # the folder reads as a table (of no rows) from the start
        self.rows, self.bytes = 0, self.bytes if self.csv else 0
        self.done = (0, 0, self.bytes)
        self._record()

    def _reopen(self, progress: dict[str, Any]) -> None:
        """Keep the rows of the finished inputs; cut away the rows after them."""
        self.rows, self.bytes = progress["rows"], progress.get("bytes", 0)
        self.done = (progress["inputs_done"], self.rows, self.bytes)
        self.complete = progress["complete"]
        if self.csv:
            if self.path.stat().st_size < self.bytes:
                raise ValueError(self._unlike_record(f"it has {self.path.stat().st_size} bytes, not {self.bytes}"))
            self.file = open(self.path, "r+b", buffering=0)  # noqa: SIM115  (closed in close())
            self.file.truncate(self.bytes)
            self.file.seek(self.bytes)
            self.parts = []
            return
        listed = progress["parts"]
        missing = [name for name, _ in listed if not (self.path / name).is_file()]
        if missing or sum(count for _, count in listed) < self.rows:
            raise ValueError(self._unlike_record(f"parts are missing ({', '.join(missing) or 'rows'})"))
        kept, total = [], 0
        for name, count in listed:
            if total + count <= self.rows:
                # A part may hold more rows than its record says: the first rows replace a new folder's empty part
                # under its name, and a kill can come before the record that counts them.
                held = pq.read_metadata(self.path / name).num_rows
                if held < count:
                    raise ValueError(self._unlike_record(f"{name} has {held} rows, not {count}"))
                if held > count:
                    self._write_table(pq.read_table(self.path / name).slice(0, count), name)
                kept.append([name, count])
            elif total < self.rows:  # the part where the finished rows end: its first rows stay
                table = pq.read_table(self.path / name).slice(0, self.rows - total)
                self._write_table(table, name)
                kept.append([name, self.rows - total])
            total += count
        names = {name for name, _ in kept}
        for part in self.path.glob("part-*"):
            if part.name not in names and self._is_own_part(part.name):
                part.unlink()
        self.parts = kept

    def _unlike_record(self, what: str) -> str:
        return f"cannot resume {self.path}: it does not match its progress record ({what}); replace it with --overwrite"

    # ------------------------------------------------------------------ writing

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Rows in table order; a CSV gets them at once (one write of whole lines), a folder at the next part."""
        if not rows:
            return
        if self.csv:
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=self.schema.names, extrasaction="raise", lineterminator="\r\n")
            writer.writerows(_csv_row(row) for row in rows)
            self._append(text.getvalue().encode("utf-8"))
        else:
            self.buffer += rows
        self.rows += len(rows)

    @property
    def inputs_done(self) -> int:
        """How many inputs (from the first) have all their rows on disk."""
        return self.done[0]

    def _append(self, data: bytes) -> None:
        """Whole lines at the CSV's end; a write that fails (a full disk) is cut back off, and named."""
        try:
            view = memoryview(data)
            while view:
                view = view[self.file.write(view) :]
        except OSError as error:
            self.file.truncate(self.bytes)
            self.file.seek(self.bytes)
            raise OSError(f"{self.path}: cannot write the table ({error.strerror or error})") from None
        self.bytes += len(data)

    def finish_inputs(self, count: int) -> None:
        """The first `count` inputs have all their rows written (an input that gave no frame has none)."""
        if count > (self.boundaries[-1][0] if self.boundaries else self.done[0]):
            self.boundaries.append((count, self.rows, self.bytes))

    def flush(self, force: bool = False) -> None:
        """Rows to disk (a CSV: now; a folder: a part when enough rows or seconds have gathered, or `force`), then the
        progress record: the inputs whose rows are all on disk."""
        elapsed = time.monotonic() - self.last_flush
        # (A CSV buffers nothing: its writes are whole and unbuffered, on disk already.)
        if self.buffer and (force or len(self.buffer) >= self.rows_per_part or elapsed >= self.flush_seconds):
            self._write_part(self.buffer)
            self.buffer = []  # after the part is in place: rows whose part failed stay for the next try
        on_disk = self.rows - len(self.buffer)
        durable = [boundary for boundary in self.boundaries if boundary[1] <= on_disk]
        if durable:
            if self.csv:  # the rows reach the disk before the record that counts them (a power cut)
                os.fsync(self.file.fileno())
            self.done = durable[-1]
            self.boundaries = self.boundaries[len(durable) :]
            self._record()

    def _write_part(self, rows: list[dict[str, Any]]) -> None:
        """A new part; the first rows replace the empty part a new folder starts with."""
        if self.parts and self.parts[-1][1] == 0:
            self.parts.pop()
        number = len(self.parts)
        name = (
            PART_NAME.format(number=number)
            if self.shard is None
            else SHARD_PART_NAME.format(shard=self.shard, number=number)
        )
        self._write_table(pa.Table.from_pylist(rows, schema=self.schema), name)
        self.parts.append([name, len(rows)])
        self.last_flush = time.monotonic()

    def _write_table(self, table: pa.Table, name: str) -> None:
        """A part under a hidden name, renamed into the folder: whole or absent."""
        staging = self.path / f".{name}.tmp"
        try:
            pq.write_table(table, staging)
            with open(staging, "rb") as handle:  # on the disk before it is named, and before the record names it
                os.fsync(handle.fileno())
        except OSError as error:
            staging.unlink(missing_ok=True)
            raise OSError(f"{self.path}: cannot write a part of the table ({error.strerror or error})") from None
        follow_umask(staging)
        os.replace(staging, self.path / name)

    def _record(self) -> None:
        inputs_done, rows, size = self.done
        record = {"format": PROGRESS_FORMAT, "fingerprint": self.fingerprint, "inputs_done": inputs_done,
                  "rows": rows, "complete": self.complete}  # fmt: skip
        if self.csv:
            record["bytes"] = size
        else:
            record["parts"] = self.parts
        if self.shard is not None:
            record["inputs"] = self.inputs
        if self.stats:
            record["stats"] = self.stats
        write_text_atomically(self.record_path, json.dumps(record, indent=1) + "\n")

    @property
    def record_path(self) -> Path:
        return progress_path(self.path, self.shard)

    def _is_own_part(self, name: str) -> bool:
        """Whether a part file name is this writer's (a shard's, or a one-process run's)."""
        if self.shard is None:
            return re.fullmatch(r"part-\d{6}\.parquet", name) is not None
        return re.fullmatch(rf"part-{re.escape(self.shard)}-\d{{6}}\.parquet", name) is not None

    def close(self, complete: bool = True) -> Path:
        """Every row to disk and the progress recorded (`complete`: every input finished); the lock is released."""
        try:
            self.flush(force=True)
            if complete and not self.boundaries:
                self.complete = True
            self._record()
        finally:
            if self.csv:
                self.file.close()
            self._release()
        return self.path

    def discard(self) -> None:
        """Remove a new output that got no row (a run that read nothing leaves nothing behind); only the table's own
        files go (a folder is removed when nothing else is in it)."""
        try:
            self.record_path.unlink(missing_ok=True)
            if self.csv:
                self.file.close()
                self.path.unlink(missing_ok=True)
            else:
                for part in self.path.glob("part-*.parquet"):
                    if self._is_own_part(part.name):
                        part.unlink()
                if not any(self.path.iterdir()):
                    self.path.rmdir()
        finally:
            self._release()

    def _release(self) -> None:
        if self.own_lock:
            self.lock.release()


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    return {name: (f"{value:.9g}" if isinstance(value, float) else value) for name, value in row.items()}  # float32


def _is_part(name: str) -> bool:
    return name.startswith("part-") and name.endswith(PARQUET_SUFFIX)


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def read_table(path: str | os.PathLike):
    """A written table as a pandas DataFrame: a CSV file, or a Parquet folder (or file)."""
    import pandas as pd

    path = Path(path)
    return pd.read_csv(path) if is_csv_output(path) else pd.read_parquet(path)


__all__ = ["TableWriter", "check_table_path", "clear_table_folder", "is_csv_output", "read_progress", "read_record",
           "read_table", "shard_records"]  # fmt: skip
