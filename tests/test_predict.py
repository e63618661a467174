"""`affect-hf predict` on a generated video of two moving faces (from a real photo), pictures and broken files:
rows per frame x face, stable ids, smoothing, tables, plots, overlay, Ctrl-C and bad input."""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from skimage.data import astronaut

import affect_hf
from affect_hf.cli import main
from affect_hf.data.synthetic_video import write_face_video
from affect_hf.hub import save_model_folder
from affect_hf.inference.predict import predict
from affect_hf.inference.smoothing import ExponentialSmoother
from affect_hf.inference.table import read_table
from affect_hf.inference.tracking import FaceTracker
from tests.test_modeling import tiny_emma_with_visible_heads


FACE = astronaut()[40:300, 110:350]  # the photo's face, cropped close
NUM_FRAMES, FPS, SIZE = 24, 12, (384, 216)
EXPRESSION_COLUMNS = [f"expression_{name}" for name in ("Neutral", "Anger", "Happiness", "Other")]


@pytest.fixture(scope="module")
def emma_folder(tmp_path_factory) -> Path:
    model = tiny_emma_with_visible_heads()
    return save_model_folder(model, tmp_path_factory.mktemp("predict") / "emma")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    write_face_video(folder / "two_faces.mp4", FACE, num_frames=NUM_FRAMES, fps=FPS, size=SIZE)
    Image.fromarray(astronaut()).save(folder / "photo.jpg")
    Image.fromarray(np.full((60, 90, 3), 120, np.uint8)).save(folder / "no_face.png")
    (folder / "notes.txt").write_text("neither a picture nor a video")
    return folder


@pytest.fixture(scope="module")
def analysed(emma_folder, media, tmp_path_factory) -> tuple[pd.DataFrame, object, Path]:
    output = tmp_path_factory.mktemp("out") / "table.csv"
    summary = predict([media], emma_folder, output, batch_size=5, device="cpu", progress=False,
                      plots_dir=output.parent / "plots", overlay=output.parent / "overlay.mp4")  # fmt: skip
    return read_table(output), summary, output.parent


def test_one_row_per_frame_and_face_with_two_stable_ids(analysed, media):
    table, summary, _ = analysed
    video = table[table["source"] == str(media / "two_faces.mp4")]
    assert len(video) == 2 * NUM_FRAMES and summary.frames == NUM_FRAMES + 2
    assert sorted(video["frame"].unique()) == list(range(NUM_FRAMES))
    np.testing.assert_allclose(video.groupby("frame")["time"].first(), np.arange(NUM_FRAMES) / FPS, atol=1e-6)
    assert set(video["face_id"]) == {0, 1}
    centres = (video["box_x1"] + video["box_x2"]) / 2
    for face_id, side in video.assign(left=centres < SIZE[0] / 2).groupby("face_id")["left"]:
        assert side.all() or not side.any(), f"face {face_id} changed sides: its id jumped between people"
    assert video.groupby("frame")["face_id"].nunique().eq(2).all()


def test_pictures_a_frame_without_a_face_and_a_skipped_file(analysed, media):
    table, summary, _ = analysed
    photo = table[table["source"] == str(media / "photo.jpg")]
    assert len(photo) == 1 and photo["frame"].iloc[0] == 0 and math.isnan(photo["time"].iloc[0])
    empty = table[table["source"] == str(media / "no_face.png")]
    assert len(empty) == 1 and math.isnan(empty["face_id"].iloc[0]) and math.isnan(empty["valence"].iloc[0])
    assert summary.frames_without_face == 1 and summary.rows == len(table)
    assert summary.media.skipped == [(str(media / "notes.txt"), summary.media.skipped[0][1])]
    assert "neither an image nor a video" in summary.media.skipped[0][1]


def test_rows_hold_the_pipelines_numbers(analysed, media, emma_folder):
    table, _, _ = analysed
    frame = next(iter(av.open(str(media / "two_faces.mp4")).decode(video=0))).to_ndarray(format="rgb24")
    [found] = affect_hf.pipeline(emma_folder, device="cpu").analyze_images([frame], video=[True])  # a video frame
    faces = sorted((face.to_dict() for face in found), key=lambda face: face["box"][0])
    rows = table[(table["source"] == str(media / "two_faces.mp4")) & (table["frame"] == 0)].sort_values("box_x1")
    for face, (_, row) in zip(faces, rows.iterrows(), strict=True):
        assert row["box_x1"] == pytest.approx(face["box"][0], abs=1e-3)
        assert row["valence"] == pytest.approx(face["valence"], rel=1e-4, abs=1e-5)
        assert row["expression"] == face["expression"]
        for name, probability in face["au_probabilities"].items():
            assert row[f"{name}_probability"] == pytest.approx(probability, abs=1e-5)
            assert row[name] == int(face["au_active"][name])
        assert row["right_eye_x"] == pytest.approx(face["landmarks"]["right_eye"][0], abs=1e-3)
    assert table.loc[table["face_id"].notna(), EXPRESSION_COLUMNS].notna().all().all()


def test_plots_and_overlay_are_written(analysed, media):
    _, summary, folder = analysed
    names = sorted(path.name for path in summary.plots)
    assert names == sorted(
        ["pictures_circumplex.png"]
        + [f"two_faces.mp4_{kind}.png" for kind in ("valence_arousal", "circumplex", "expressions", "action_units")]
    )
    for path in summary.plots:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 300
    frames = [frame.to_ndarray(format="rgb24") for frame in av.open(str(folder / "overlay.mp4")).decode(video=0)]
    assert len(frames) == NUM_FRAMES and frames[0].shape == (SIZE[1], SIZE[0], 3)
    # The boxes are drawn: each face's colour (first two of the palette) is on the frame, and not on the input's.
    from affect_hf.inference.overlay import PALETTE

    def has_colour(frame, colour):
        return (np.abs(frame.astype(int) - colour).sum(-1) < 60).sum() > 50

    source = next(iter(av.open(str(media / "two_faces.mp4")).decode(video=0))).to_ndarray(format="rgb24")
    assert all(has_colour(frames[0], colour) and not has_colour(source, colour) for colour in PALETTE[:2])
    hidden = [name for name in os.listdir(folder) if name.startswith(".")]
    assert sorted(hidden) == [".overlay.mp4.lock", ".table.csv.lock", ".table.csv.progress.json"], hidden


def test_parquet_holds_the_same_rows_and_every_n_frames_samples(emma_folder, media, tmp_path, analysed):
    table, _, _ = analysed
    video = str(media / "two_faces.mp4")
    summary = predict([video], emma_folder, tmp_path / "t.parquet", every_n_frames=3, device="cpu", progress=False)
    sampled = read_table(tmp_path / "t.parquet")
    assert summary.frames == NUM_FRAMES // 3 and sorted(sampled["frame"].unique()) == list(range(0, NUM_FRAMES, 3))
    reference = table[(table["source"] == video) & (table["frame"] % 3 == 0)]
    key = ["frame", "face_id"]
    merged = reference.merge(sampled, on=key, suffixes=("_csv", "_parquet"))
    assert len(merged) == len(sampled) == len(reference)
    np.testing.assert_allclose(merged["valence_csv"], merged["valence_parquet"], rtol=1e-4, atol=1e-6)
    assert str(sampled["AU12"].dtype) == "int8" and str(sampled["face_id"].dtype) == "int64"


def test_smoothing_is_the_documented_exponential_average(emma_folder, media, tmp_path, analysed):
    table, _, _ = analysed
    video = str(media / "two_faces.mp4")
    time_constant = 0.25
    predict([video], emma_folder, tmp_path / "s.csv", smoothing=time_constant, device="cpu", progress=False)
    smoothed = read_table(tmp_path / "s.csv")
    raw = table[table["source"] == video]
    keep = math.exp(-(1 / FPS) / time_constant)
    for face_id in (0, 1):
        raw_valence = raw[raw["face_id"] == face_id].sort_values("frame")["valence"].to_numpy()
        face = smoothed[smoothed["face_id"] == face_id].sort_values("frame")
        expected = [raw_valence[0]]
        for value in raw_valence[1:]:
            expected.append(keep * expected[-1] + (1 - keep) * value)
        np.testing.assert_allclose(face["valence"], expected, rtol=1e-4, atol=1e-6)
        assert np.abs(np.diff(face["valence"])).sum() < np.abs(np.diff(raw_valence)).sum()
        # Decisions and the expression are re-derived from the smoothed probabilities.
        probabilities = face[[f"{name}_probability" for name in ("AU1", "AU12")]].to_numpy()
        assert (face[["AU1", "AU12"]].to_numpy() == (probabilities >= 0.5)).all()
        labels = [column.removeprefix("expression_") for column in face if column.startswith("expression_")]
        argmax = face[[f"expression_{label}" for label in labels]].to_numpy().argmax(1)
        assert list(face["expression"]) == [labels[i] for i in argmax]


def test_tracker_keeps_ids_through_motion_and_forgets_after_a_gap():
    tracker = FaceTracker(min_iou=0.2, max_gap=1.0)
    left, right = torch.tensor([10.0, 10, 60, 60]), torch.tensor([200.0, 10, 250, 60])
    assert tracker.update(torch.stack([left, right]), 0.0) == [0, 1]
    shift = torch.tensor([8.0, 0, 8, 0])
    assert tracker.update(torch.stack([right - shift, left + shift]), 0.1) == [1, 0]  # listed the other way round
    assert tracker.update(torch.stack([left + 2 * shift]), 0.2) == [0]
    assert tracker.update(torch.stack([right]), 0.9) == [1]  # unseen for 0.8 s: still known
    assert tracker.update(torch.stack([left]), 5.0) == [2]  # gone for longer than max_gap: a new person
    assert tracker.update(torch.zeros(0, 4), 5.1) == []


def test_smoother_rejects_a_non_positive_time_constant(emma_folder):
    with pytest.raises(ValueError, match="must be positive"):
        ExponentialSmoother(0, None)


def test_a_corrupt_packet_mid_video_keeps_the_other_frames(emma_folder, tmp_path):
    path = write_face_video(tmp_path / "long.mp4", FACE, num_frames=48, fps=FPS, size=SIZE)
    packets = [packet for packet in av.open(str(path)).demux(video=0) if packet.size]
    position, size = packets[20].pos, packets[20].size
    data = bytearray(path.read_bytes())
    data[position : position + size] = b"\xff" * size  # one frame's data destroyed
    path.write_bytes(bytes(data))
    summary = predict([path], emma_folder, tmp_path / "t.csv", device="cpu", progress=False)
    table = read_table(tmp_path / "t.csv")
    assert summary.media.corrupt_packets == {str(path): 1}
    assert summary.frames == 47 and len(table) == 2 * 47
    # Indices count the frames decoded (0..46); the lost frame shows as a gap in time, which stays the frames' own.
    frames = table.groupby("frame")["time"].first()
    assert list(frames.index) == list(range(47)) and frames.diff().max() == pytest.approx(2 / FPS, abs=1e-6)
    assert frames.iloc[-1] == pytest.approx(47 / FPS, abs=1e-6)


def test_ctrl_c_keeps_the_rows_so_far_and_resume_completes_them(emma_folder, tmp_path):
    video = write_face_video(tmp_path / "long.mp4", FACE, num_frames=400, fps=FPS, size=SIZE)
    output = tmp_path / "rows.csv"
    command = [sys.executable, "-m", "affect_hf.cli", "predict", str(video), "--model", str(emma_folder),
               "--output", str(output), "--batch_size", "4", "--device", "cpu"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while (not output.is_file() or output.stat().st_size < 20_000) and time.monotonic() < deadline:
        time.sleep(0.05)  # rows are appended batch by batch
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    rows = pd.read_csv(output)
    assert 8 <= len(rows) < 800 and (rows["frame"].diff().dropna() >= 0).all()
    assert "interrupted" in stderr and "--resume" in stderr
    main(["predict", str(video), "--model", str(emma_folder), "--output", str(output), "--batch_size", "4",
          "--device", "cpu", "--resume"])  # fmt: skip
    completed = pd.read_csv(output)
    assert len(completed) == 800 and list(completed["frame"].unique()) == list(range(400))


def test_cli_refuses_a_model_that_is_not_an_affect_model_and_a_run_with_nothing_read(emma_folder, tmp_path, capsys):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    config = ViTMAEConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    ViTMAEForPreTraining(config).save_pretrained(tmp_path / "mae")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 1000)

    def run(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exit_info:
            main(["predict", *args, "--device", "cpu"])
        captured = capsys.readouterr()
        return exit_info.value.code, captured.out, captured.err

    code, _, err = run(str(junk), "--model", str(tmp_path / "mae"), "--output", str(tmp_path / "a.csv"))
    assert code == 1 and "'vit_mae' model, not an affect model" in err
    code, out, err = run(str(junk), "--model", str(emma_folder), "--output", str(tmp_path / "b.csv"))
    assert code == 1 and "nothing could be read" in err
    assert f"skipped {junk}" in out and not (tmp_path / "b.csv").exists()
    code, _, err = run(str(junk), "--model", str(emma_folder), "--output", str(tmp_path / "c.xlsx"))
    assert code == 1 and "an output is FILE.csv, or a Parquet folder" in err
    code, _, err = run(str(tmp_path / "nowhere.mp4"), "--model", str(emma_folder), "--output", str(tmp_path / "d.csv"))
    assert code == 1 and "no such file or folder" in err


def test_a_phone_photo_is_read_upright_from_its_exif_orientation(tmp_path):
    from affect_hf.inference.media import read_still_image

    upright = astronaut()[:300, :200]
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": the stored pixels lie on their side
    Image.fromarray(np.rot90(upright, k=1).copy()).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    image = read_still_image(tmp_path / "phone.jpg").permute(1, 2, 0).numpy()
    assert image.shape == upright.shape
    assert np.abs(image.astype(int) - upright.astype(int)).mean() < 8  # JPEG noise only


def test_outputs_inside_an_input_folder_are_not_read_back_and_empty_inputs_are_refused(emma_folder, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(astronaut()).save(folder / "photo.jpg")
    for run in range(2):  # the second run must not analyse the first run's table, plots or overlay
        summary = predict([folder], emma_folder, folder / "table.csv", plots_dir=folder / "plots", device="cpu",
                          progress=False, overwrite=run > 0)  # fmt: skip
        assert summary.frames == 1 and not summary.media.skipped
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no file to read"):
        predict([tmp_path / "empty"], emma_folder, tmp_path / "t.csv", device="cpu", progress=False)


def test_a_16_bit_picture_keeps_its_contrast(tmp_path):
    from affect_hf.inference.media import read_still_image

    gray = np.asarray(Image.fromarray(astronaut()).convert("L"), dtype=np.uint16) * 257  # full 16-bit range
    Image.fromarray(gray).save(tmp_path / "sixteen.png")
    image = read_still_image(tmp_path / "sixteen.png")
    assert image.shape == (3, 512, 512)
    np.testing.assert_array_equal(image[0].numpy(), (gray // 257).astype(np.uint8))
