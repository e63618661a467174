"""`affect-hf predict --temporal` and `affect_hf.analyze(..., temporal=...)` on a video of two moving faces (from a
real photo): each face's rows are the temporal model's answers over that face's own frames (windows side by side,
or the last window for a causal model), a bidirectional model holds rows only as long as it must, short faces and
pictures still get rows, and what cannot work together is refused."""

import json
import logging
import math
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from skimage.data import astronaut

import affect_hf
from affect_hf.cli import main
from affect_hf.data.synthetic_video import write_face_video
from affect_hf.hub import save_model_folder
from affect_hf.inference.predict import AnalysisRun, predict
from affect_hf.inference.table import read_table
from affect_hf.modeling import TemporalAffectModel
from affect_hf.modeling.pipeline_affect import affect_scores
from affect_hf.models import weights_sha256
from affect_hf.training.recipes.temporal import temporal_config
from tests.test_modeling import TINY_VIT, tiny_emma_with_visible_heads


FACE = astronaut()[40:300, 110:350]
NUM_FRAMES, FPS, SIZE = 24, 12, (384, 216)
WINDOW = 8  # frames, at the video's own rate: windows [0, 8), [8, 16), [16, 24)
ANSWER_COLUMNS = ["valence", "arousal", "expression_Neutral", "expression_Happiness", "AU1_probability",
                  "AU12_probability"]  # fmt: skip


def visible_temporal(frame_config, causal: bool = False, seed: int = 0) -> TemporalAffectModel:
    """A tiny temporal model for `frame_config`'s EMMA with weights large enough that every frame of its window
    moves every answer (initialised weights barely do)."""
    config = temporal_config(frame_config, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                             intermediate_size=64, dropout=0.0, causal=causal, window_frames=WINDOW,
                             frames_per_second=float(FPS))  # fmt: skip
    model = TemporalAffectModel(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("temporal_predict")
    emma = tiny_emma_with_visible_heads()
    folders = {"emma": save_model_folder(emma, root / "emma")}
    write_face_video(root / "two_faces.mp4", FACE, num_frames=NUM_FRAMES, fps=FPS, size=SIZE)
    folders["video"] = root / "two_faces.mp4"
    for name, causal in (("bidirectional", False), ("causal", True)):
        model = visible_temporal(emma.config, causal)
        model.config.frame_model = str(folders["emma"])
        model.config.frame_model_sha256 = weights_sha256(folders["emma"])
        model.save_pretrained(root / name)
        folders[name] = root / name
    return folders


@pytest.fixture(scope="module")
def frame_level(folders) -> dict[int, list]:
    """Per face id, its frames in order as the frame-level run gives them: (frame index, time, FaceResult)."""
    tracks: dict[int, list] = {}
    for batch in AnalysisRun(folders["video"], folders["emma"], device="cpu", batch_size=5):
        for frame, faces in batch:
            for face in faces:
                tracks.setdefault(face.face_id, []).append((frame.index, frame.time, face))
    assert sorted(tracks) == [0, 1] and all(len(track) == NUM_FRAMES for track in tracks.values())
    return tracks


def model_answers(model: TemporalAffectModel, faces: list, times: list[float]) -> dict[str, np.ndarray]:
    """The temporal model over one window of a face's frames (positions: time x the trained frame rate), as the
    table's columns."""
    with torch.no_grad():
        outputs = model(features=torch.stack([face.features for face in faces])[None],
                        scores=torch.stack([face.frame_scores for face in faces])[None],
                        positions=(torch.tensor(times, dtype=torch.float64) * FPS).float()[None])  # fmt: skip
    first = type(outputs)(**{name: outputs[name][0] for name in ("logits", "valence_arousal", "au_logits")})
    scores = affect_scores(first, model.config)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    columns = {"valence": scores["valence_arousal"][:, 0], "arousal": scores["valence_arousal"][:, 1]}
    columns.update({f"expression_{label}": scores["expression_probabilities"][:, i] for i, label in enumerate(labels)})
    columns.update({f"{name}_probability": scores["au_probabilities"][:, i]
                    for i, name in enumerate(model.config.au_names)})  # fmt: skip
    return {name: value.numpy() for name, value in columns.items()}


def expected_rows(model, track: list, windows: list[list[int]]) -> dict[str, np.ndarray]:
    """The answers for a face's frames, window by window (`windows`: positions in `track`), in frame order."""
    parts = [model_answers(model, [track[i][2] for i in rows], [track[i][1] for i in rows]) for rows in windows]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def side_by_side(track: list, frames: int) -> list[list[int]]:
    first = track[0][1] * FPS
    groups: dict[int, list[int]] = {}
    for position, (_, time, _) in enumerate(track):
        groups.setdefault(math.floor((time * FPS - first) / frames + 1e-9), []).append(position)
    return list(groups.values())


def face_rows(table, face_id: int):
    return table[table["face_id"] == face_id].sort_values("frame")


def test_predict_temporal_writes_each_face_s_answers_from_its_own_frames(folders, frame_level, tmp_path):
    """The done-when: per face id, the table holds the bidirectional model's answers over that face's frames alone
    (in windows of 8 side by side), the frame model's own answers beside them (`--keep_frame_outputs`), and the
    overlay still gets every frame's picture."""
    output = tmp_path / "temporal.csv"
    main(["predict", str(folders["video"]), "--model", str(folders["emma"]), "--temporal",
          str(folders["bidirectional"]), "--keep_frame_outputs", "--output", str(output), "--device", "cpu",
          "--batch_size", "5", "--overlay", str(tmp_path / "overlay.mp4")])  # fmt: skip
    table = read_table(output)
    model = TemporalAffectModel.from_pretrained(folders["bidirectional"]).eval()
    assert len(table) == 2 * NUM_FRAMES and list(table["frame"]) == sorted(table["frame"])  # in frame order
    for face_id, track in frame_level.items():
        rows = face_rows(table, face_id)
        assert rows["frame"].tolist() == [index for index, _, _ in track]
        windows = side_by_side(track, WINDOW)
        assert [len(window) for window in windows] == [8, 8, 8]
        expected = expected_rows(model, track, windows)
        for column in ANSWER_COLUMNS:
            np.testing.assert_allclose(rows[column], expected[column], atol=2e-5, err_msg=column)
        assert (rows["AU12"] == (rows["AU12_probability"] >= 0.5)).all()
        frame_valence = np.array([face.valence for _, _, face in track])
        np.testing.assert_allclose(rows["frame_valence"], frame_valence, atol=1e-5)
        assert rows["frame_expression"].tolist() == [face.expression for _, _, face in track]
        assert np.abs(rows["valence"] - rows["frame_valence"]).max() > 0.01  # the temporal model answered
        # The same windows with one frame of the other face in them: other answers, so the test can see a mix-up.
        other = frame_level[1 - face_id]
        mixed = [*track[:3], other[3], *track[4:]]
        assert np.abs(expected_rows(model, mixed, windows)["valence"][:8] - expected["valence"][:8]).max() > 1e-3
    frames = list(av.open(str(tmp_path / "overlay.mp4")).decode(video=0))
    assert len(frames) == NUM_FRAMES and (frames[0].width, frames[0].height) == SIZE


def test_a_causal_model_answers_each_frame_from_the_last_window_as_frames_come(folders, frame_level):
    table = affect_hf.analyze(folders["video"], folders["emma"], temporal=folders["causal"], device="cpu",
                              batch_size=5)  # fmt: skip
    model = TemporalAffectModel.from_pretrained(folders["causal"]).eval()
    for face_id, track in frame_level.items():
        rows = face_rows(table, face_id)
        for position in (0, 3, 7, 8, 15, 23):  # the window's first frames see fewer, then always the last 8
            context = [i for i in range(position + 1) if track[i][1] * FPS > track[position][1] * FPS - WINDOW]
            assert len(context) == min(position + 1, WINDOW)
            expected = model_answers(model, [track[i][2] for i in context], [track[i][1] for i in context])
            for column in ANSWER_COLUMNS:
                assert rows[column].iloc[position] == pytest.approx(expected[column][-1], abs=2e-5), column
    # A causal model holds nothing: every batch of frames comes back as it went in.
    run = AnalysisRun(folders["video"], folders["emma"], temporal=folders["causal"], device="cpu", batch_size=5)
    assert [len(batch) for batch in run] == [5, 5, 5, 5, 4, 0]


def test_a_bidirectional_model_holds_a_track_no_longer_than_max_track_seconds(folders, frame_level):
    """Cut at 0.45 s, each face's track is answered in stretches of 6 frames; rows wait for their stretch only, the
    held frames without their pictures."""
    run = AnalysisRun(folders["video"], folders["emma"], temporal=folders["bidirectional"], device="cpu",
                      batch_size=5, max_track_seconds=0.45)  # fmt: skip
    read = released = 0
    lags, frames, batches = [], [], []
    for batch in run:
        read = run.frames
        released += len(batch)
        lags.append(read - released)
        frames += [frame for frame, _ in batch]
        batches.append(batch)
    assert lags[0] == 5 and max(lags) <= 6 + 5 and lags[-1] == 0  # the first batch waits; none waits for long
    assert [frame.index for frame in frames] == list(range(NUM_FRAMES))
    assert frames[0].image.numel() == 0  # held: its pixels were let go
    model = TemporalAffectModel.from_pretrained(folders["bidirectional"]).eval()
    faces = {face.face_id: [] for _, found in batches[-1] for face in found}
    for batch in batches:
        for _, found in batch:
            for face in found:
                faces[face.face_id].append(face)
    for face_id, track in frame_level.items():
        expected = expected_rows(model, track, [list(range(start, start + 6)) for start in range(0, NUM_FRAMES, 6)])
        np.testing.assert_allclose([face.valence for face in faces[face_id]], expected["valence"], atol=2e-5)


def test_still_pictures_and_a_one_frame_video_get_rows_at_frame_level_said_once(folders, tmp_path, caplog):
    video = write_face_video(tmp_path / "one_frame.mp4", FACE, num_frames=1, fps=FPS, size=SIZE)
    with caplog.at_level(logging.WARNING, logger="affect_hf.inference.temporal"):
        table = affect_hf.analyze([astronaut(), video, astronaut()[:, ::-1].copy()], folders["emma"],
                                  temporal=folders["bidirectional"], device="cpu")  # fmt: skip
    said = [record for record in caplog.records if "less than the temporal model's window" in record.getMessage()]
    assert len(said) == 1 and "a single frame at frame level" in said[0].getMessage()
    assert table["face_id"].notna().all()
    assert table.groupby("source", sort=False).size().to_dict() == {"<image 0>": 1, str(video): 2, "<image 2>": 1}
    # A picture's face: the model over that one frame.
    [[face]] = affect_hf.pipeline(folders["emma"], device="cpu").analyze_images([astronaut()])
    model = TemporalAffectModel.from_pretrained(folders["bidirectional"]).eval()
    expected = model_answers(model, [face], [0.0])
    picture = table[table["source"] == "<image 0>"].iloc[0]
    for column in ANSWER_COLUMNS:
        assert picture[column] == pytest.approx(expected[column][0], abs=2e-5), column


def test_what_cannot_run_together_is_refused_before_any_frame_is_read(folders, tmp_path, capsys, caplog):
    video, emma, temporal = folders["video"], folders["emma"], folders["bidirectional"]
    with pytest.raises(ValueError, match="both model time"):
        affect_hf.analyze(video, emma, temporal=temporal, smoothing=0.5, device="cpu")
    with pytest.raises(ValueError, match="keep_frame_outputs keeps the frame model's answers"):
        affect_hf.analyze(video, emma, keep_frame_outputs=True, device="cpu")
    with pytest.raises(ValueError, match="holds a emma model, not a temporal one"):
        affect_hf.analyze(video, emma, temporal=emma, device="cpu")
    output = tmp_path / "t.csv"
    with pytest.raises(SystemExit):  # the temporal folder given as the model: one line, naming what to do
        main(["predict", str(video), "--model", str(temporal), "--output", str(output), "--device", "cpu"])
    assert f"is a temporal model: it reads a frame model's outputs, not pictures. Give its frame model ({emma})" in (
        capsys.readouterr().err
    )
    wider = save_model_folder(tiny_emma_with_visible_heads(vit_config={**TINY_VIT, "hidden_size": 48}),
                              tmp_path / "wider")  # fmt: skip
    with pytest.raises(ValueError, match="reads 32-wide features and 28 scores; the frame model .* gives 48 and 28"):
        affect_hf.analyze(video, wider, temporal=temporal, device="cpu")
    retrained = save_model_folder(tiny_emma_with_visible_heads(seed=1), tmp_path / "retrained")
    with pytest.raises(ValueError, match="has other weights"):
        affect_hf.analyze(video, retrained, temporal=temporal, device="cpu", strict=True)
    with caplog.at_level(logging.WARNING, logger="affect_hf.models"):
        affect_hf.analyze(video, retrained, temporal=temporal, device="cpu", max_seconds=0.2)
    assert any("has other weights" in record.getMessage() for record in caplog.records)
    assert not output.exists()


def test_a_temporal_table_resumes_only_as_the_run_that_wrote_it(folders, tmp_path):
    video, emma = folders["video"], folders["emma"]
    output = tmp_path / "t.parquet"
    first = predict([video], emma, output, temporal=folders["bidirectional"], device="cpu", progress=False)
    assert first.rows == 2 * NUM_FRAMES and first.stage_seconds["temporal"] > 0
    again = predict([video], emma, output, temporal=folders["bidirectional"], device="cpu", progress=False,
                    resume=True)  # fmt: skip
    assert again.resumed_inputs == 1 and again.rows == 0
    with pytest.raises(ValueError, match=r"\(temporal, temporal_settings changed\)"):
        predict([video], emma, output, temporal=folders["causal"], device="cpu", progress=False, resume=True)
    moved = tmp_path / "moved"  # the same weights elsewhere still name another run: the folder is part of it
    shutil.copytree(folders["bidirectional"], moved)
    with pytest.raises(ValueError, match=r"\(temporal changed\)"):
        predict([video], emma, output, temporal=moved, device="cpu", progress=False, resume=True)
    assert len(read_table(output)) == 2 * NUM_FRAMES
    progress = json.loads((output / ".progress.json").read_text())
    assert progress["fingerprint"]["max_track_seconds"] == 60.0


def test_the_app_answers_videos_through_the_temporal_model(folders, tmp_path):
    from affect_hf.app import analyse_video
    from affect_hf.inference.predict import load_temporal_model

    analyzer = affect_hf.pipeline(folders["emma"], device="cpu")
    _, temporal = load_temporal_model(folders["bidirectional"], analyzer)
    table, plots, notice = analyse_video(analyzer, str(folders["video"]), 30.0, tmp_path / "page", temporal)
    rows = read_table(table)
    reference = affect_hf.analyze(folders["video"], analyzer, temporal=temporal)
    np.testing.assert_allclose(rows["valence"], reference["valence"], atol=1e-6)
    assert len(plots) == 4 and f"{NUM_FRAMES} frames, {2 * NUM_FRAMES} faces" in notice
    from affect_hf.app import build_app

    page = build_app(analyzer, temporal=temporal)
    assert "In videos, a bidirectional temporal model answers over each face's frames" in json.dumps(page.config)
