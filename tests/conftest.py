"""Shared fixtures: a small synthetic ABAW4 MTL set, built once per session (treat it as read-only)."""

from pathlib import Path

import pytest

from affect_hf.data import make_synthetic_abaw


@pytest.fixture(scope="session")
def synthetic_abaw_root(tmp_path_factory) -> Path:
    """ABAW4 MTL layout with 96 train, 48 validation and 16 test frames of 64 px; no missing images."""
    return make_synthetic_abaw(
        tmp_path_factory.mktemp("synthetic_abaw"),
        num_train=96,
        num_validation=48,
        num_test=16,
        image_size=64,
        frames_per_video=16,
        missing_label_rate=0.2,
        seed=0,
    )


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """Accelerate keeps one process-wide state; each test's `train` call may ask for another precision."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
