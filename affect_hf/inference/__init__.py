"""Inference: faces in pictures and videos to tables (`analyze`, `iter_analyze`, `predict`), one `FaceResult` per
face, tracking, smoothing and a temporal model over time, the table layout, the overlay video, and ABAW test-set
submissions."""

from .analysis import FaceAffectAnalyzer, pipeline
from .media import DatasetRow, Frame, MediaReport, Picture, dataset_rows, load_dataset_rows
from .predict import AnalysisRun, PredictionSummary, analyze, iter_analyze, load_temporal_model, predict
from .results import FaceResult, frame_rows, table_schema
from .submission import SUBMISSION_TRACKS, SubmissionError, abaw_test_names, predict_abaw, validate_submission
from .table import TableWriter, read_table
from .temporal import TemporalTracks


__all__ = [
    "SUBMISSION_TRACKS",
    "AnalysisRun",
    "FaceAffectAnalyzer",
    "FaceResult",
    "Frame",
    "MediaReport",
    "Picture",
    "DatasetRow",
    "dataset_rows",
    "load_dataset_rows",
    "PredictionSummary",
    "SubmissionError",
    "TableWriter",
    "TemporalTracks",
    "abaw_test_names",
    "analyze",
    "frame_rows",
    "iter_analyze",
    "load_temporal_model",
    "pipeline",
    "predict",
    "predict_abaw",
    "read_table",
    "table_schema",
    "validate_submission",
]
