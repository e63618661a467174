"""The notebook API and the contracts every tool shares: `affect_hf.analyze` equals the CLI's table, the table's
columns, the output layout (CSV file or Parquet folder), the picture pixel limit, the plots of a DataFrame, and the
one way in to a model (devices, local paths and Hub ids)."""

import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from skimage.data import astronaut

import affect_hf
from affect_hf.cli import main
from affect_hf.data.pictures import MAX_PIXELS, PictureTooLargeError, open_picture
from affect_hf.data.synthetic_video import write_face_video
from affect_hf.data.transforms import load_rgb_image
from affect_hf.hub import save_model_folder
from affect_hf.inference import read_table
from affect_hf.inference.table import read_record
from affect_hf.models import DTYPES, is_local_path, load_affect_model, resolve_device, resolve_dtype
from tests.test_modeling import tiny_emma_with_visible_heads


FACE = astronaut()[40:300, 110:350]
FIVE_POINTS = ("right_eye", "left_eye", "nose_tip", "mouth_right", "mouth_left")


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` pixels and holds none: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def emma_folder(tmp_path_factory) -> Path:
    return save_model_folder(tiny_emma_with_visible_heads(), tmp_path_factory.mktemp("api") / "emma")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("api_media")
    Image.fromarray(astronaut()).save(folder / "photo.jpg")
    write_face_video(folder / "clip.mp4", FACE, num_frames=10, fps=10, size=(384, 216))
    return folder


@pytest.fixture(scope="module")
def cli_table(emma_folder, media, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("api_out") / "affect.parquet"
    main(["predict", str(media / "photo.jpg"), str(media / "clip.mp4"), "--model", str(emma_folder), "--output",
          str(output), "--batch_size", "4", "--device", "cpu"])  # fmt: skip
    return output


def test_analyze_equals_the_cli_table_on_a_photo_and_a_video(emma_folder, media, cli_table, tmp_path):
    table = affect_hf.analyze([media / "photo.jpg", media / "clip.mp4"], emma_folder, batch_size=4, device="cpu")
    assert sorted(path.name for path in cli_table.iterdir()) == [".progress.json", "part-000000.parquet"]
    written = pd.read_parquet(cli_table)
    pd.testing.assert_frame_equal(table, written)
    assert len(table) == 1 + 2 * 10 and set(table["source"]) == {str(media / "photo.jpg"), str(media / "clip.mp4")}
    # The same rows through `datasets`, and through a CSV output.
    from datasets import load_dataset

    dataset = load_dataset("parquet", data_dir=str(cli_table), split="train", cache_dir=str(tmp_path / "cache"))
    assert dataset.column_names == list(table.columns) and len(dataset) == len(table)
    main(["predict", str(media / "photo.jpg"), str(media / "clip.mp4"), "--model", str(emma_folder), "--output",
          str(tmp_path / "affect.csv"), "--batch_size", "4", "--device", "cpu"])  # fmt: skip
    as_csv = read_table(tmp_path / "affect.csv")
    assert list(as_csv.columns) == list(table.columns)
    np.testing.assert_allclose(as_csv["valence"], table["valence"], atol=1e-6)
    assert (as_csv["expression"] == table["expression"]).all()


def test_iter_analyze_gives_the_same_rows_batch_by_batch(emma_folder, media, cli_table):
    analyzer = affect_hf.pipeline(emma_folder, device="cpu", batch_size=4)
    batches = list(affect_hf.iter_analyze([media / "photo.jpg", media / "clip.mp4"], analyzer, batch_size=4))
    assert [len(batch) for batch in batches] == [1 + 2 * 3, 2 * 4, 2 * 3]  # frames 1+3, 4, 3 of 11
    pd.testing.assert_frame_equal(pd.concat(batches, ignore_index=True), pd.read_parquet(cli_table))


def test_the_next_batch_is_found_while_the_model_runs_this_one(emma_folder, media, cli_table):
    """`overlap`: detection and alignment of batch k + 1 in a second thread while the model runs batch k (the
    default on CUDA, where the two overlap); the same rows, in the same order."""
    import threading

    batches = affect_hf.iter_analyze([media / "photo.jpg", media / "clip.mp4"], emma_folder, batch_size=4,
                                     device="cpu", overlap=True)  # fmt: skip
    first = next(batches)
    assert any(thread.name.startswith("affect-hf-faces") for thread in threading.enumerate())
    table = pd.concat([first, *batches], ignore_index=True)
    pd.testing.assert_frame_equal(table, pd.read_parquet(cli_table))
    assert not any(thread.name.startswith("affect-hf-faces") for thread in threading.enumerate())


def test_analyze_takes_pictures_in_memory_and_a_loaded_analyzer(emma_folder, media, cli_table, tmp_path):
    analyzer = affect_hf.pipeline(emma_folder, device="cpu")
    photo = Image.open(media / "photo.jpg")
    table = affect_hf.analyze([photo, np.asarray(photo)], analyzer)
    assert list(table["source"]) == ["<image 0>", "<image 1>"] and list(table["face_id"]) == [0, 0]
    from_file = pd.read_parquet(cli_table).iloc[0]
    for column in ("valence", "arousal", "box_x1", "right_eye_x", "expression_Happiness"):
        assert table[column].tolist() == pytest.approx([from_file[column]] * 2, abs=1e-6)
    (tmp_path / "notes.md").write_text("no picture")
    with pytest.raises(ValueError, match="nothing could be read from the inputs .*notes.md: neither an image"):
        affect_hf.analyze(tmp_path / "notes.md", analyzer)


def test_the_columns_are_the_shared_contract(cli_table):
    table = pd.read_parquet(cli_table)
    landmarks = [f"{name}_{axis}" for name in FIVE_POINTS for axis in "xy"]
    fixed = ["source", "frame", "time", "face_id", "face_score", "box_x1", "box_y1", "box_x2", "box_y2",
             "face_width", "sharpness", "yaw", "pitch", "roll", *landmarks,
             "valence", "arousal", "expression"]  # fmt: skip
    assert list(table.columns[: len(fixed)]) == fixed
    # Every face has the five points and a pose; the video's faces (BlazeFace's) also its other points, last.
    assert table[[*landmarks, "yaw", "pitch", "roll", "sharpness"]].notna().all().all()
    assert list(table.columns[-6:]) == [f"{name}_{axis}" for name in ("mouth_center", "right_ear_tragion",
                                                                      "left_ear_tragion") for axis in "xy"]  # fmt: skip
    video = table["time"].notna()
    assert table.loc[video, "mouth_center_x"].notna().all() and table.loc[~video, "mouth_center_x"].isna().all()
    np.testing.assert_allclose(table["face_width"], table["box_x2"] - table["box_x1"], rtol=1e-6)
    assert table["AU12"].isin([0, 1]).all() and table["AU12_probability"].between(0, 1).all()


def test_the_plots_take_the_dataframe(cli_table, tmp_path):
    from matplotlib.figure import Figure

    from affect_hf import plots

    table = pd.read_parquet(cli_table)
    video = table[table["time"].notna()]
    for figure in (plots.valence_arousal_figure(video), plots.circumplex_figure(video),
                   plots.expressions_figure(video), plots.action_units_figure(video),
                   plots.faces_figure(table[table["time"].isna()])):  # fmt: skip
        assert isinstance(figure, Figure) and figure.axes
    written = plots.save_plots(table, tmp_path / "plots")
    assert sorted(path.name for path in written) == sorted(
        [f"clip.mp4_{kind}.png" for kind in ("valence_arousal", "circumplex", "expressions", "action_units")]
        + ["pictures_circumplex.png"]
    )
    assert plots.expression_labels(table)[:2] == ["Neutral", "Anger"] and plots.action_unit_names(table)[0] == "AU1"


def test_the_pixel_limit_admits_150_megapixels_and_refuses_bombs(tmp_path):
    assert 12000 * 12000 <= MAX_PIXELS < 12001 * 12500
    bomb, large, admitted = tmp_path / "bomb.png", tmp_path / "large.png", tmp_path / "admitted.png"
    bomb.write_bytes(png_header(50000, 50000))  # beyond PIL's own hard limit too
    large.write_bytes(png_header(13000, 12000))  # 156 MP: PIL would only warn
    admitted.write_bytes(png_header(12000, 12000))  # 144 MP: admitted, then found to hold no pixels
    for path in (bomb, large):
        with pytest.raises(PictureTooLargeError, match=str(path)):
            open_picture(path)
        with pytest.raises(OSError, match="pixels"):  # training skips and counts it (an OSError)
            load_rgb_image({"path": str(path), "bytes": None})
    with pytest.raises(OSError) as error:
        open_picture(admitted)
    assert not isinstance(error.value, PictureTooLargeError)
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(small)
    assert open_picture(small, max_pixels=10_000).size == (100, 100)
    with pytest.raises(PictureTooLargeError, match="100 x 100 pixels, more than the limit of 9,999"):
        open_picture(small, max_pixels=9_999)


def test_predict_skips_a_bomb_beside_a_good_photo(emma_folder, media, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(png_header(50000, 50000))
    Image.open(media / "photo.jpg").save(folder / "photo.jpg")
    main(["predict", str(folder), "--model", str(emma_folder), "--output", str(tmp_path / "t.csv"), "--device", "cpu"])
    out = capsys.readouterr().out
    assert f"skipped {folder / 'bomb.png'}:" in out and "pixels" in out.split("skipped")[1]
    table = read_table(tmp_path / "t.csv")
    assert list(table["source"]) == [str(folder / "photo.jpg")]


def test_devices_are_resolved_or_refused_by_name():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda:1' is not available"):
            resolve_device("cuda:1")
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="device 'mps' is not available"):
            resolve_device("mps")


@pytest.mark.parametrize(
    ("device", "native_bf16", "expected"),
    [("cpu", False, torch.float32), ("cpu", True, torch.bfloat16), ("cuda", True, torch.bfloat16),
     ("cuda", False, torch.float16), ("mps", True, torch.float32)],
)  # fmt: skip
def test_auto_dtype_is_bf16_only_where_the_device_computes_it(monkeypatch, device, native_bf16, expected):
    """The hardware probes are the boundary: bf16 where native (AVX512-BF16 / AMX, Ampere on), fp16 on older GPUs."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0) if native_bf16 else (7, 5))
    assert resolve_dtype("auto", torch.device(device)) == expected
    assert resolve_dtype("fp16", torch.device(device)) == torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'half'"):
        resolve_dtype("half", torch.device(device))


def test_the_model_runs_in_the_dtype_asked_and_a_resume_in_another_is_refused(
    emma_folder, media, cli_table, tmp_path, capsys
):
    fp32 = pd.read_parquet(cli_table)
    for dtype, tolerance in (("bf16", 2e-2), ("fp16", 2e-3)):
        analyzer = affect_hf.pipeline(emma_folder, device="cpu", dtype=dtype)
        assert {p.dtype for p in analyzer.model.parameters()} == {DTYPES[dtype]}
        table = affect_hf.analyze([media / "photo.jpg", media / "clip.mp4"], analyzer, batch_size=4)
        # Detection and alignment keep fp32: the same faces, the same boxes; the model's answers within its rounding.
        pd.testing.assert_frame_equal(table[["source", "frame", "face_id", "box_x1", "yaw"]],
                                      fp32[["source", "frame", "face_id", "box_x1", "yaw"]])  # fmt: skip
        np.testing.assert_allclose(table[["valence", "arousal"]], fp32[["valence", "arousal"]], atol=tolerance)
        assert not table[["valence", "arousal"]].equals(fp32[["valence", "arousal"]])  # it really ran in dtype
    output = tmp_path / "bf16.parquet"
    arguments = ["predict", str(media / "photo.jpg"), "--model", str(emma_folder), "--output", str(output), "--device",
                 "cpu", "--dtype", "bf16"]  # fmt: skip
    main(arguments)
    # The dtype names a table where it is not fp32: tables written before `--dtype` existed (fp32) still resume.
    assert read_record(output / ".progress.json")["fingerprint"]["dtype"] == "bf16"
    assert "dtype" not in read_record(cli_table / ".progress.json")["fingerprint"]
    with pytest.raises(SystemExit) as exit_info:  # the rows would differ by more than rounding
        main([*arguments[:-1], "fp32", "--resume"])
    assert exit_info.value.code == 1 and "(dtype changed)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="the onnx backend runs fp32, not bf16"):
        load_affect_model(emma_folder, backend="onnx", dtype="bf16")


def test_local_paths_and_hub_ids_are_told_apart(emma_folder, tmp_path):
    assert is_local_path(emma_folder) and is_local_path("runs/emma/best_model") and is_local_path("./emma")
    assert not is_local_path("someone/emma-abaw")  # a Hub id: left to the Hub
    with pytest.raises(FileNotFoundError, match="model folder not found: runs/emma/best_model"):
        load_affect_model("runs/emma/best_model")
    # A bare name is a Hub id; offline (the tests' machine) or missing there, the error names it as one.
    with pytest.raises(OSError, match="no-such-emma is no folder here, and as a Hub id it could not be loaded"):
        load_affect_model("no-such-emma", local_files_only=True)
    with pytest.raises(ValueError, match="the onnx backend runs on the CPU"):
        load_affect_model(emma_folder, backend="onnx", device="cuda")
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        load_affect_model(emma_folder, backend="tensorrt")


def test_a_mistake_is_one_line_and_debug_shows_the_traceback(emma_folder, media, tmp_path, capsys):
    arguments = ["predict", str(media / "photo.jpg"), "--model", str(emma_folder), "--output", str(tmp_path / "t.csv")]
    with pytest.raises(SystemExit) as exit_info:
        main([*arguments, "--device", "cuda:7"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and err.count("\n") == 0
    assert err.startswith("affect-hf predict: error: device 'cuda:7' is not available")
    with pytest.raises(ValueError, match="min_face_score must lie in"):
        main([*arguments, "--min_face_score", "2", "--debug"])
    with pytest.raises(SystemExit):
        main([*arguments, "--max_faces", "0"])
    assert "max_faces must be at least 1" in capsys.readouterr().err


def test_an_ordinary_run_prints_no_warning(emma_folder, media, tmp_path):
    """`python -m affect_hf predict` on a photo and a video, with plots: stderr holds progress bars only (no
    torchvision fallback, no deprecation or other warning)."""
    command = [sys.executable, "-m", "affect_hf", "predict", str(media / "photo.jpg"), str(media / "clip.mp4"),
               "--model", str(emma_folder), "--output", str(tmp_path / "t.parquet"), "--plots",
               "--device", "cpu"]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines and all(re.search(r"\[\d\d:\d\d", line) for line in lines), lines  # each a progress bar
    assert "21 rows" in result.stdout and len(list((tmp_path / "t_plots").glob("*.png"))) == 5
