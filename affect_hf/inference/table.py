"""One row schema for every analysis output (one row per frame x face), and its streaming CSV/Parquet writer.

Columns: `source`, `frame`, `time` (seconds; empty for a still image), `face_id` (empty when the frame has no face),
`face_score`, the box `box_x1..box_y2` and each landmark's `<name>_x`, `<name>_y` in the frame's pixels; then
`valence`, `arousal`, `expression`, one `expression_<Label>` probability per class, and per AU
`<AU>_probability` and `<AU>` (1 when active at the model's threshold, else 0).
"""

import csv
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..files import StagedFile


TABLE_FORMATS = (".csv", ".parquet")


def table_schema(config: Any, keypoint_names: tuple[str, ...]) -> pa.Schema:
    """The columns for a model (its labels and AUs) and a detector (its landmarks), with their types."""
    columns = [("source", pa.string()), ("frame", pa.int64()), ("time", pa.float64()), ("face_id", pa.int64())]
    columns += [("face_score", pa.float32())] + [(f"box_{name}", pa.float32()) for name in ("x1", "y1", "x2", "y2")]
    columns += [(f"{name}_{axis}", pa.float32()) for name in keypoint_names for axis in "xy"]
    if getattr(config, "model_type", None) == "emma":
        columns += [("valence", pa.float32()), ("arousal", pa.float32())]
    columns += [("expression", pa.string())]
    columns += [(f"expression_{config.id2label[i]}", pa.float32()) for i in range(len(config.id2label))]
    for name in getattr(config, "au_names", ()):
        columns += [(f"{name}_probability", pa.float32()), (name, pa.int8())]
    return pa.schema(columns)


def face_row(result: dict[str, Any]) -> dict[str, Any]:
    """The affect columns of one face from the pipeline's result (`modeling.pipeline_affect.describe`)."""
    row = {name: result[name] for name in ("valence", "arousal", "expression") if name in result}
    row.update({f"expression_{label}": score for label, score in result["expression_scores"].items()})
    for name, probability in result.get("au_probabilities", {}).items():
        row[f"{name}_probability"] = probability
        row[name] = int(result["au_active"][name])
    return row


def check_table_path(path: str | os.PathLike) -> Path:
    """The output's format from its suffix; a wrong one fails before any work is done."""
    path = Path(path)
    if path.suffix not in TABLE_FORMATS:
        raise ValueError(f"{path}: the output must end in {' or '.join(TABLE_FORMATS)}")
    return path


class TableWriter:
    """Rows streamed to `path` (CSV or Parquet by its suffix) through a hidden file beside it (`StagedFile`).

    `close()` (also on Ctrl-C or an error, when used as a context manager) finishes the file and renames it into
    place, so the output holds every row written so far and is never half a file. Parquet is written one row
    group per `rows_per_group` rows; CSV is flushed as often.
    """

    def __init__(self, path: str | os.PathLike, schema: pa.Schema, rows_per_group: int = 512):
        self.path, self.schema, self.rows_per_group = check_table_path(path), schema, rows_per_group
        self.staged = StagedFile(self.path)
        self.rows: list[dict[str, Any]] = []
        self.written = 0
        if self.path.suffix == ".csv":
            self.file = open(self.staged.path, "w", newline="", encoding="utf-8")  # noqa: SIM115  (closed in close())
            self.csv = csv.DictWriter(self.file, fieldnames=schema.names, extrasaction="raise")
            self.csv.writeheader()
        else:
            self.parquet = pq.ParquetWriter(self.staged.path, schema)

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.rows += rows
        if len(self.rows) >= self.rows_per_group:
            self.flush()

    def flush(self) -> None:
        rows, self.rows = self.rows, []  # taken first: an interrupt mid-write never writes them twice
        if not rows:
            return
        if self.path.suffix == ".csv":
            self.csv.writerows(_csv_row(row) for row in rows)
            self.file.flush()
        else:
            self.parquet.write_table(pa.Table.from_pylist(rows, schema=self.schema))
        self.written += len(rows)

    def close(self, keep: bool = True) -> Path:
        """Finish the file and put it in place; `keep=False` (nothing worth keeping) leaves any old output as it
        was and removes the partial file."""
        try:
            if keep:
                self.flush()
        finally:
            (self.file if self.path.suffix == ".csv" else self.parquet).close()
            if keep:
                self.staged.publish()
            else:
                self.staged.discard()
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
    """A written table as a pandas DataFrame (CSV or Parquet)."""
    import pandas as pd

    path = Path(path)
    return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
