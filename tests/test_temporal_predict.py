"""`affect-hf predict --temporal` and `affect_hf.analyze(..., temporal=...)` on a video of two moving faces (from a
real photo): each face's rows are the temporal model's answers over that face's own frames (windows side by side,
or the last window for a causal model), a bidirectional model holds rows only as long as it must, short faces and
pictures still get rows, and what cannot work together is refused."""

import json
import logging
import math
import shutil
from dataclasses import replace
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


def visible_temporal(frame_config, causal: bool = False, seed: int = 0, window_frames: int = WINDOW,
                     frames_per_second: float = FPS) -> TemporalAffectModel:  # fmt: skip
    """A tiny temporal model for `frame_config`'s EMMA with weights large enough that every frame of its window
    moves every answer (initialised weights barely do)."""
    config = temporal_config(frame_config, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                             intermediate_size=64, dropout=0.0, causal=causal, window_frames=window_frames,
                             frames_per_second=float(frames_per_second))  # fmt: skip
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
                        positions=(torch.tensor(times, dtype=torch.float64) * model.config.frames_per_second
                                   ).float()[None])  # fmt: skip
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


def frame_config_of(folder: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder)


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
    """Cut at 0.45 s (to the next window boundary: 8 frames), each face's rows wait for their stretch only, the held
    frames without their pictures, and every answer is the uncut run's."""
    run = AnalysisRun(folders["video"], folders["emma"], temporal=folders["bidirectional"], device="cpu",
                      batch_size=5, max_track_seconds=0.45)  # fmt: skip
    released = 0
    lags, frames, batches = [], [], []
    for batch in run:
        released += len(batch)
        lags.append(run.frames - released)
        frames += [frame for frame, _ in batch]
        batches.append(batch)
    assert lags[0] == 5 and max(lags) <= 8 + 5 - 1 and lags[-1] == 0  # the first batch waits; none waits for long
    assert [frame.index for frame in frames] == list(range(NUM_FRAMES))
    assert all(frame.image.untyped_storage().nbytes() == 0 for frame in frames)  # held: their pixels were let go
    model = TemporalAffectModel.from_pretrained(folders["bidirectional"]).eval()
    faces: dict[int, list] = {0: [], 1: []}
    for batch in batches:
        for _, found in batch:
            for face in found:
                faces[face.face_id].append(face)
    for face_id, track in frame_level.items():
        expected = expected_rows(model, track, side_by_side(track, WINDOW))
        np.testing.assert_allclose([face.valence for face in faces[face_id]], expected["valence"], atol=2e-5)


def test_sampled_frames_and_two_videos_in_a_row_each_get_their_own_windows(folders, frame_level, tmp_path):
    """With every third frame, a window of 8 frame numbers holds 3 frames; a second video starts its faces afresh
    (nothing of the first one's tracks reaches it)."""
    copy = tmp_path / "again.mp4"
    shutil.copy(folders["video"], copy)
    table = affect_hf.analyze([folders["video"], copy], folders["emma"], temporal=folders["bidirectional"],
                              device="cpu", every_n_frames=3)  # fmt: skip
    model = TemporalAffectModel.from_pretrained(folders["bidirectional"]).eval()
    for source in (folders["video"], copy):
        rows = table[table["source"] == str(source)]
        for face_id, track in frame_level.items():
            sampled = [sighting for sighting in track if sighting[0] % 3 == 0]
            windows = side_by_side(sampled, WINDOW)
            assert [len(window) for window in windows] == [3, 3, 2]
            expected = expected_rows(model, sampled, windows)
            np.testing.assert_allclose(face_rows(rows, face_id)["valence"], expected["valence"], atol=2e-5)


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
    with pytest.raises(ValueError, match=r"\(max_track_seconds, temporal, temporal_settings changed\)"):
        predict([video], emma, output, temporal=folders["causal"], device="cpu", progress=False, resume=True)
    moved = tmp_path / "moved"  # the same weights elsewhere still name another run: the folder is part of it
    shutil.copytree(folders["bidirectional"], moved)
    with pytest.raises(ValueError, match=r"\(temporal changed\)"):
        predict([video], emma, output, temporal=moved, device="cpu", progress=False, resume=True)
    assert len(read_table(output)) == 2 * NUM_FRAMES
    progress = json.loads((output / ".progress.json").read_text())
    assert progress["fingerprint"]["max_track_seconds"] == 60.0
    # A model made in memory is named by its weights.
    in_memory = tmp_path / "m.csv"
    predict([video], emma, in_memory, temporal=visible_temporal(frame_config_of(emma)), device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"\(temporal_version changed\)"):
        predict([video], emma, in_memory, temporal=visible_temporal(frame_config_of(emma), seed=1), device="cpu",
                progress=False, resume=True)  # fmt: skip


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


def phone_stream(frames: range, rate: float, generator: torch.Generator, times: dict[int, float] | None = None):
    """One face on each frame of a video at `rate` frames/s, with the frame model's outputs drawn at random (their
    values do not matter here, only which frames the temporal model reads together); `times` overrides some."""
    from affect_hf.inference.media import Frame
    from affect_hf.inference.results import FaceResult

    stream = []
    for index in frames:
        face = FaceResult(box=(0.0, 0.0, 10.0, 10.0), score=1.0, landmarks={}, expression="Neutral",
                          expression_scores={}, face_id=0, valence=0.5, arousal=0.5,
                          features=torch.randn(32, generator=generator),
                          frame_scores=torch.randn(28, generator=generator))  # fmt: skip
        time = (times or {}).get(index, index / rate)
        stream.append((Frame("phone.mp4", index, time, torch.zeros(3, 4, 4, dtype=torch.uint8)), [face]))
    return stream


def test_any_frame_rate_a_long_track_gaps_a_broken_frame_and_time_going_back_lose_no_row():
    """A 60 frames/s phone video under a model trained at 25 frames/s (windows of 32 frame numbers: 76.8 of its
    frames), 70 s of one face: every frame comes back once and in order, each answer is the model over exactly
    its window (the cut at `max_track_seconds` is invisible). A 0.5 s gap stays inside the track, a 3 s one (past
    `max_gap`) starts a new one, as does time going back; a frame with NaN outputs keeps the frame model's answer
    and is read by no other."""
    from affect_hf.inference.temporal import TemporalTracks

    frame_config = tiny_emma_with_visible_heads().config
    model = visible_temporal(frame_config, window_frames=32, frames_per_second=25.0)
    start, count, rate = 79, 60 * 70, 60.0  # a face first seen at frame 79: windows do not start at 0
    short_gap, long_gap = range(start + 500, start + 530), range(start + 2000, start + 2180)
    back = start + 3000  # this frame's time is 10 frames earlier than the frame before it
    stream = phone_stream(range(start, start + count), rate, torch.Generator().manual_seed(0),
                          times={back: (back - 10) / rate})  # fmt: skip
    stream = [(frame, faces) for frame, faces in stream if frame.index not in short_gap and frame.index not in long_gap]
    broken = next(position for position, (frame, _) in enumerate(stream) if frame.index == start + 1000)
    stream[broken][1][0] = replace(stream[broken][1][0], features=torch.full((32,), float("nan")))
    tracks = TemporalTracks(model, max_track_seconds=20.0, max_gap=2.0)
    released, lags = [], []
    for first in range(0, len(stream), 16):
        released += tracks.add(stream[first : first + 16])
        lags.append(min(first + 16, len(stream)) - len(released))
    released += tracks.finish()
    assert [frame.index for frame, _ in released] == [frame.index for frame, _ in stream]
    assert max(lags) <= math.ceil(20.0 * 25 / 32) * 32 / 25 * rate + 16  # a stretch (whole windows) + a batch
    assert tracks.unreadable_faces == 1 and released[broken][1][0].valence == 0.5  # kept at frame level

    def reference(part: list) -> list[float]:
        """The documented windows, computed apart: from the part's first frame, 32 frame numbers each."""
        origin = part[0][0].time * 25
        groups: dict[int, list] = {}
        for frame, [face] in part:
            if frame.index != start + 1000:
                groups.setdefault(math.floor((frame.time * 25 - origin) / 32 + 1e-6), []).append((frame, face))
        values = []
        for group in groups.values():
            values += list(model_answers(model, [face for _, face in group], [frame.time for frame, _ in group])[
                "valence"])  # fmt: skip
        return values

    answered = [faces[0].valence for frame, faces in released if frame.index != start + 1000]
    parts = [[entry for entry in stream if low <= entry[0].index < high]
             for low, high in ((0, long_gap.stop), (long_gap.stop, back), (back, start + count))]  # fmt: skip
    np.testing.assert_allclose(answered, [value for part in parts for value in reference(part)], atol=2e-5)
    # Causal, the same stream: every frame answered as it comes, from its track's frames less than a window back.
    causal = TemporalTracks(visible_temporal(frame_config, causal=True, window_frames=32, frames_per_second=25.0))
    first_batch = stream[:100]
    answered = causal.add(first_batch)
    assert [frame.index for frame, _ in answered] == [frame.index for frame, _ in first_batch]
    for position in (0, 50, 99):
        now = first_batch[position][0].time * 25
        context = [(frame, faces[0]) for frame, faces in first_batch[: position + 1] if now - frame.time * 25 < 32]
        assert len(context) == min(position + 1, 77)  # 76.8 of the video's frames per window
        expected = model_answers(causal.model, [face for _, face in context], [frame.time for frame, _ in context])
        assert answered[position][1][0].valence == pytest.approx(expected["valence"][-1], abs=2e-5)


def test_two_people_crossing_one_hidden_for_a_second_each_read_alone(folders, tmp_path):
    """Real faces (the astronaut and the cameraman) crossing, the cameraman hidden for 1 s: each face id's answers
    are the model over that id's own frames, windows of 1.6 s from its first frame, the hidden second a gap in its
    window (its frames placed by their times, the missing ones never filled)."""
    from affect_hf.data.scenes import write_crossing_video

    path, _ = write_crossing_video(tmp_path / "crossing.mp4")  # 20 frames/s, 5 s, hidden from 3.6 s to 4.6 s
    frame_config = frame_config_of(folders["emma"])
    model = visible_temporal(frame_config, window_frames=32, frames_per_second=20.0)
    tracks: dict[int, list] = {}
    for batch in AnalysisRun(path, folders["emma"], device="cpu"):
        for frame, faces in batch:
            for face in faces:
                tracks.setdefault(face.face_id, []).append((frame.index, frame.time, face))
    table = affect_hf.analyze(path, folders["emma"], temporal=model, device="cpu", keep_frame_outputs=True)
    gapped = 0
    for face_id, track in tracks.items():
        rows = face_rows(table, face_id)
        assert rows["frame"].tolist() == [index for index, _, _ in track]
        windows = [[position for position, (_, time, _) in enumerate(track)
                    if math.floor((time - track[0][1]) * 20 / 32 + 1e-6) == window]
                   for window in range(math.floor((track[-1][1] - track[0][1]) * 20 / 32 + 1e-6) + 1)]  # fmt: skip
        windows = [window for window in windows if window]
        gapped += any(np.diff([track[i][0] for i in window]).max(initial=1) > 1 for window in windows)
        expected = expected_rows(model, track, windows)
        np.testing.assert_allclose(rows["valence"], expected["valence"], atol=2e-5)
        np.testing.assert_allclose(rows["frame_valence"], [face.valence for _, _, face in track], atol=1e-5)
    assert gapped  # some window really held the hidden second as a gap
