"""The output layout of every analysis table, and its streaming writer.

An output path ending in `.csv` is one CSV file. Any other output (`affect.parquet`, or a name without a suffix)
is a Parquet *folder* of part files, `part-00000.parquet`, ..., all of one schema (`results.table_schema`), which
`pandas.read_parquet(folder)` and `datasets.load_dataset("parquet", data_dir=folder)` read as one table. Rows are
streamed into a hidden staging file or folder beside the output, which replaces the output when the writer closes
(also on Ctrl-C or an error), so a reader sees the old output or the new one, never half of one.
"""

import csv
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..files import StagedFile, replace_directory


CSV_SUFFIX = ".csv"
PARQUET_SUFFIX = ".parquet"
PART_NAME = "part-{number:05d}.parquet"


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
    return path


class TableWriter:
    """Rows streamed to a CSV file or a Parquet folder (see the module's docstring), staged beside the output.

    `close()` (also on Ctrl-C or an error, when used as a context manager) finishes the staging file or folder and
    moves it into place. A CSV is flushed every `rows_per_part` rows; a Parquet folder gets one part file per
    `rows_per_part` rows (a folder of no rows holds one empty part, so that readers still see the columns).
    """

    def __init__(self, path: str | os.PathLike, schema: pa.Schema, rows_per_part: int = 512):
        self.path, self.schema, self.rows_per_part = check_table_path(path), schema, rows_per_part
        self.rows: list[dict[str, Any]] = []
        self.written = self.parts = 0
        if is_csv_output(self.path):
            self.staged = StagedFile(self.path)
            self.file = open(self.staged.path, "w", newline="", encoding="utf-8")  # noqa: SIM115  (closed in close())
            self.csv = csv.DictWriter(self.file, fieldnames=schema.names, extrasaction="raise")
            self.csv.writeheader()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.folder = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent))

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.rows += rows
        if len(self.rows) >= self.rows_per_part:
            self.flush()

    def flush(self) -> None:
        rows, self.rows = self.rows, []  # taken first: an interrupt mid-write never writes them twice
        if not rows:
            return
        if is_csv_output(self.path):
            self.csv.writerows(_csv_row(row) for row in rows)
            self.file.flush()
        else:
            self._write_part(rows)
        self.written += len(rows)

    def _write_part(self, rows: list[dict[str, Any]]) -> None:
        part = self.folder / PART_NAME.format(number=self.parts)
        pq.write_table(pa.Table.from_pylist(rows, schema=self.schema), part)
        self.parts += 1

    def close(self, keep: bool = True) -> Path:
        """Finish the output and put it in place; `keep=False` (nothing worth keeping) leaves any old output as it
        was and removes the staging file or folder."""
        if is_csv_output(self.path):
            try:
                if keep:
                    self.flush()
            finally:
                self.file.close()
                self.staged.publish() if keep else self.staged.discard()
            return self.path
        try:
            if keep:
                self.flush()
                if not self.parts:
                    self._write_part([])
                os.chmod(self.folder, 0o755)
                replace_directory(self.folder, self.path)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
        return self.path

    def __enter__(self) -> "TableWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        name: (f"{value:.9g}" if isinstance(value, float) else value) for name, value in row.items()
    }  # float32 exact


def read_table(path: str | os.PathLike):
    """A written table as a pandas DataFrame: a CSV file, or a Parquet folder (or file)."""
    import pandas as pd

    path = Path(path)
    return pd.read_csv(path) if is_csv_output(path) else pd.read_parquet(path)


__all__ = ["TableWriter", "check_table_path", "is_csv_output", "read_table"]
