"""Inference: test-set predictions and ABAW submission files."""

from .submission import SUBMISSION_TRACKS, SubmissionError, abaw_test_names, predict_abaw, validate_submission


__all__ = ["SUBMISSION_TRACKS", "SubmissionError", "abaw_test_names", "predict_abaw", "validate_submission"]
