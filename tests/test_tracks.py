"""The Aff-Wild2 uni-task tracks (VA, EXPR, AU): reader, bad lines, and EMMA trained on one track."""

import shutil

import numpy as np
import pytest

from affect_hf.data import abaw_mtl_features, load_abaw_mtl, make_synthetic_abaw
from affect_hf.data.abaw_tracks import ABAW_TRACK_HEADERS, find_track_folder, load_abaw_track
from affect_hf.labels import MISSING_ACTION_UNIT, MISSING_EXPRESSION, MISSING_VALENCE_AROUSAL, NUM_ACTION_UNITS
from affect_hf.training import train
from tests.runs import run_arguments


@pytest.fixture(scope="module")
def tracks_root(tmp_path_factory):
    """40 training frames in videos of 16 (2 without an image) and 16 validation frames, in the tracks layout."""
    return make_synthetic_abaw(
        tmp_path_factory.mktemp("tracks"), num_train=40, num_validation=16, num_test=4, image_size=32,
        frames_per_video=16, missing_label_rate=0.2, missing_image_count=2, layout="tracks",
    )  # fmt: skip


def _written(root, task, split="Train_Set"):
    """(name, fields) of every line of every video file, as written."""
    rows = []
    for path in sorted((find_track_folder(root, task) / split).glob("*.txt")):
        lines = path.read_text().splitlines()
        assert lines[0] == ABAW_TRACK_HEADERS[task]
        rows += [(f"{path.stem}/{frame:05d}.jpg", line.split(",")) for frame, line in enumerate(lines[1:], 1)]
    return rows


@pytest.mark.parametrize("task", ["va", "expr", "au"])
def test_each_track_reads_its_labels_frame_by_frame_with_the_mtl_features(tracks_root, task):
    with pytest.warns(UserWarning, match="Skipped 2 of 40 frames"):
        dataset = load_abaw_track(tracks_root, task, "train")
    assert dataset.features == abaw_mtl_features()
    written = [
        (name, fields)
        for name, fields in _written(tracks_root, task)
        if (tracks_root / "cropped_aligned" / name).exists()
    ]
    assert list(dataset["name"]) == [name for name, _ in written] and len(dataset) == 38
    assert list(dataset["video"]) == [name.split("/")[0] for name, _ in written]
    assert list(dataset["frame"]) == [int(name[-9:-4]) for name, _ in written]
    values = np.array([[float(field) for field in fields] for _, fields in written])
    valence_arousal = np.stack([dataset["valence"], dataset["arousal"]], axis=1)
    expression, action_units = np.asarray(dataset["expression"]), np.asarray(dataset["action_units"])
    if task == "va":
        np.testing.assert_allclose(valence_arousal, values, rtol=1e-6)
        assert (values == MISSING_VALENCE_AROUSAL).any(), "invalid codes are kept as missing labels"
    else:
        assert (valence_arousal == MISSING_VALENCE_AROUSAL).all()
    if task == "expr":
        np.testing.assert_array_equal(expression, values[:, 0])
        assert (values == MISSING_EXPRESSION).any()
    else:
        assert (expression == MISSING_EXPRESSION).all()
    if task == "au":
        np.testing.assert_array_equal(action_units, values)
        assert action_units.shape == (38, NUM_ACTION_UNITS) and (action_units == MISSING_ACTION_UNIT).any()
    else:
        assert (action_units == MISSING_ACTION_UNIT).all()


def test_the_track_folders_are_found_one_level_down_and_under_their_other_name(tracks_root, tmp_path):
    root = tmp_path / "affwild2"
    shutil.copytree(tracks_root / "cropped_aligned", root / "cropped_aligned")
    shutil.copytree(
        tracks_root / "EXPR_Classification_Challenge", root / "6th ABAW Annotations" / "EXPR_Recognition_Challenge"
    )
    with pytest.warns(UserWarning, match="Skipped 2"):
        assert len(load_abaw_track(root, "expr", "train")) == 38
    with pytest.raises(FileNotFoundError, match="no va track under .*VA_Estimation_Challenge"):
        load_abaw_track(root, "va", "train")


@pytest.mark.parametrize(
    ("task", "line", "message"),
    [("va", "0.2", r"expected 2 comma-separated field\(s\) for the va track, found 1"),
     ("va", "0.2,1.5", r"must lie in \[-1, 1\] or be -5"),
     ("expr", "8", r"integer in -1\.\.7"), ("expr", "2.5", r"integer in -1\.\.7"),
     ("au", ",".join(["0"] * 11 + ["2"]), "must be 0, 1 or -1"), ("au", "1,0", "expected 12")],
)  # fmt: skip
def test_a_bad_line_names_its_file_and_line(tracks_root, tmp_path, task, line, message):
    root = tmp_path / "broken"
    folder = find_track_folder(tracks_root, task)
    shutil.copytree(folder, root / folder.name)
    path = root / folder.name / "Train_Set" / "train_001.txt"
    lines = path.read_text().splitlines()
    lines[4] = line
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"train_001.txt, line 5: .*{message}"):
        load_abaw_track(root, task, "train")
    path.write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(ValueError, match="train_001.txt, line 1: expected the header line"):
        load_abaw_track(root, task, "train")


def test_mtl_rows_carry_their_video_and_frame_too(synthetic_abaw_root):
    dataset = load_abaw_mtl(synthetic_abaw_root, "train")
    assert dataset[17]["name"] == "train_001/00002.jpg"
    assert (dataset[17]["video"], dataset[17]["frame"]) == ("train_001", 2)


def test_emma_trains_on_one_track_and_is_selected_by_its_score(tracks_root, tmp_path):
    args = run_arguments(
        "emma", tmp_path, data_dir=str(tracks_root), task="va", model_config="tiny", num_train_epochs=3,
        warmup_epochs=0.5, per_device_train_batch_size=8, base_learning_rate=5e-3,
    )  # fmt: skip
    with pytest.warns(UserWarning, match="Skipped 2"):
        state = train(*args)
    assert state["status"] == "completed" and state["run"]["data"]["task"] == "va"
    assert all(set(entry) >= {"P_VA", "ccc_valence"} and "P_MTL" not in entry for entry in state["history"])
    assert state["best_score"] == max(entry["P_VA"] for entry in state["history"])
    assert "Aff-Wild2 VA track" in (tmp_path / "best_model" / "README.md").read_text()
