"""Faults of a careless or unlucky user, reproduced: a killed or doubled run keeps every finished row, a resumed one
ends with the uninterrupted table, an output is never replaced by accident, and hostile or odd files are skipped
and named."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image
from skimage.data import astronaut

import affect_hf
from affect_hf.cli import main
from affect_hf.data.synthetic_video import write_face_video
from affect_hf.files import OutputInUseError, OutputLock
from affect_hf.hub import save_model_folder
from affect_hf.inference.table import TableWriter, read_progress, read_table
from tests.test_modeling import tiny_emma_with_visible_heads


FACE = astronaut()[40:300, 110:350]
KEY = ["source", "frame", "face_id"]


@pytest.fixture(scope="module")
def emma_folder(tmp_path_factory) -> Path:
    return save_model_folder(tiny_emma_with_visible_heads(), tmp_path_factory.mktemp("lost") / "emma")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Path]:
    """A photo, a video of two faces, a mirrored photo: the kill lands in the video."""
    folder = tmp_path_factory.mktemp("lost_media")
    Image.fromarray(astronaut()).save(folder / "a_photo.jpg")
    write_face_video(folder / "b_video.mp4", FACE, num_frames=160, fps=20, size=(384, 216))
    Image.fromarray(astronaut()[:, ::-1]).save(folder / "c_mirrored.jpg")
    return [folder / "a_photo.jpg", folder / "b_video.mp4", folder / "c_mirrored.jpg"]


def assert_same_table(table: pd.DataFrame, expected: pd.DataFrame) -> None:
    """The same rows (source, frame, face id) with the same values, whatever the batches were (a batch's make-up
    moves the detector's float rounding; the pose fit turns 1e-5 px of landmark into up to 2e-4 degrees)."""
    table = table.sort_values(KEY, ignore_index=True)
    expected = expected.sort_values(KEY, ignore_index=True)
    assert list(table.columns) == list(expected.columns) and len(table) == len(expected)
    for column in table.columns:
        if pd.api.types.is_float_dtype(expected[column]):
            tolerance = 1e-3 if column in ("yaw", "pitch", "roll") else 1e-4
            np.testing.assert_allclose(table[column], expected[column], atol=tolerance, equal_nan=True, err_msg=column)
        else:
            assert (table[column].astype(str) == expected[column].astype(str)).all(), column


def start_predict(inputs, emma_folder, output, **options) -> subprocess.Popen:
    """`predict` in a real process, writing a part every 16 rows so that a kill finds several on disk."""
    script = (
        "import sys\nfrom affect_hf.inference import predict\n"
        f"predict({[str(path) for path in inputs]!r}, {str(emma_folder)!r}, {str(output)!r}, device='cpu', "
        f"batch_size=4, progress=False, rows_per_part=16, flush_seconds=0, **{options!r})\n"
    )
    return subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)


def wait_for(condition, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended first:\n{process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_a_killed_run_leaves_a_readable_table_and_resume_ends_with_the_uninterrupted_one(emma_folder, inputs, tmp_path):
    expected = affect_hf.analyze(inputs, emma_folder, device="cpu")
    output = tmp_path / "affect.parquet"
    process = start_predict(inputs, emma_folder, output)
    wait_for(lambda: len(list(output.glob("part-*.parquet"))) >= 4, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = read_table(output)  # readable as it is: whole parts only
    assert 0 < len(partial) < len(expected) and partial["source"].iloc[0] == str(inputs[0])
    progress = read_progress(output)
    assert progress["inputs_done"] == 1 and not progress["complete"]  # the photo; the video was under way
    with pytest.raises(SystemExit):  # without --resume the output is not touched
        main(["predict", *map(str, inputs), "--model", str(emma_folder), "--output", str(output), "--device", "cpu"])
    assert len(read_table(output)) == len(partial)
    main(["predict", *map(str, inputs), "--model", str(emma_folder), "--output", str(output), "--device", "cpu",
          "--resume"])  # fmt: skip
    resumed = read_table(output)
    assert_same_table(resumed, expected)
    assert read_progress(output)["complete"] and not list(output.glob(".part-*"))
    # A second resume of a finished table does nothing and changes nothing.
    main(["predict", *map(str, inputs), "--model", str(emma_folder), "--output", str(output), "--device", "cpu",
          "--resume"])  # fmt: skip
    pd.testing.assert_frame_equal(read_table(output), resumed)


def test_a_second_run_into_the_same_output_is_refused_at_once(emma_folder, inputs, tmp_path, capsys):
    output = tmp_path / "affect.csv"
    first = start_predict(inputs, emma_folder, output)
    wait_for(lambda: output.is_file(), first)
    time.sleep(1.0)
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", *map(str, inputs), "--model", str(emma_folder), "--output", str(output), "--device", "cpu",
              "--overwrite"])  # fmt: skip
    message = capsys.readouterr().err
    assert exit_info.value.code == 1 and f"being written by another run (pid {first.pid};" in message
    assert time.monotonic() - started < 5  # refused before the model is loaded
    assert first.wait(timeout=240) == 0, first.stderr.read()[-2000:]
    assert len(read_table(output)) == 1 + 2 * 160 + 1  # the first run's table, whole


def test_an_output_is_replaced_only_when_asked_and_a_foreign_folder_never(emma_folder, inputs, tmp_path):
    photo = str(inputs[0])
    arguments = ["predict", photo, "--model", str(emma_folder), "--device", "cpu", "--output"]
    main([*arguments, str(tmp_path / "t.csv")])
    with pytest.raises(SystemExit):
        main([*arguments, str(tmp_path / "t.csv")])
    main([*arguments, str(tmp_path / "t.csv"), "--overwrite"])
    assert len(read_table(tmp_path / "t.csv")) == 1
    with pytest.raises(ValueError, match=r"\(detector changed\)"):  # a resume must be the same run
        affect_hf.inference.predict(photo, emma_folder, tmp_path / "t.csv", device="cpu", resume=True,
                                    min_face_score=0.7, progress=False)  # fmt: skip
    holiday = tmp_path / "holiday"
    holiday.mkdir()
    (holiday / "beach.jpg").write_bytes(b"the user's own photo")
    with pytest.raises(SystemExit):
        main([*arguments, str(holiday), "--overwrite"])
    assert (holiday / "beach.jpg").read_bytes() == b"the user's own photo"
    (tmp_path / "old.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not written by a resumable run"):
        affect_hf.inference.predict(photo, emma_folder, tmp_path / "old.csv", device="cpu", resume=True,
                                    progress=False)  # fmt: skip


@pytest.mark.parametrize("name", ["t.csv", "t.parquet"])
def test_the_writer_keeps_the_finished_inputs_rows_after_a_crash(tmp_path, name):
    """The writer's own bookkeeping, crashed in the middle of an input (its lock dropped as a kill drops it)."""
    schema = pa.schema([("source", pa.string()), ("frame", pa.int64())])
    rows = lambda source, count: [{"source": source, "frame": frame} for frame in range(count)]  # noqa: E731
    writer = TableWriter(tmp_path / name, schema, {"run": 1}, rows_per_part=3, flush_seconds=0)
    writer.write(rows("a", 5))
    writer.finish_inputs(1)
    writer.write(rows("b", 4))
    writer.flush()
    writer.write(rows("b", 2))  # in memory (Parquet) or on disk (CSV): either way not finished
    writer.flush()
    writer.lock.release()  # the kill
    assert len(read_table(tmp_path / name)) in (5 + 4, 5 + 6)
    resumed = TableWriter(tmp_path / name, schema, {"run": 1}, resume=True)
    assert resumed.inputs_done == 1
    resumed.write(rows("b", 6))
    resumed.finish_inputs(2)
    resumed.close()
    table = read_table(tmp_path / name)
    assert list(table["source"]) == ["a"] * 5 + ["b"] * 6 and list(table["frame"]) == [*range(5), *range(6)]
    with pytest.raises(ValueError, match="run changed"):
        TableWriter(tmp_path / name, schema, {"run": 2}, resume=True)
    # A table shorter than its record (a record that outlived its rows) is not resumed from.
    if name.endswith(".csv"):
        (tmp_path / name).write_bytes((tmp_path / name).read_bytes()[:40])
    else:
        (tmp_path / name / "part-000000.parquet").unlink()
    with pytest.raises(ValueError, match="does not match its progress record"):
        TableWriter(tmp_path / name, schema, {"run": 1}, resume=True)
    # A run that reads nothing removes only its own files.
    folder = tmp_path / "kept"
    folder.mkdir()
    (folder / ".gitkeep").write_text("")
    TableWriter(folder, schema).discard()
    assert [path.name for path in folder.iterdir()] == [".gitkeep"]


def test_a_kill_before_the_first_input_ends_leaves_nothing_to_keep(tmp_path):
    """The first rows of a folder replace its empty part under the same name before any record counts them."""
    schema = pa.schema([("source", pa.string()), ("frame", pa.int64())])
    writer = TableWriter(tmp_path / "t.parquet", schema, {"run": 1}, rows_per_part=2, flush_seconds=0)
    writer.write([{"source": "a", "frame": frame} for frame in range(3)])
    writer.flush()  # a part of 3 rows on disk; the record still lists the empty one: no input finished
    writer.lock.release()  # the kill
    assert len(read_table(tmp_path / "t.parquet")) == 3
    resumed = TableWriter(tmp_path / "t.parquet", schema, {"run": 1}, resume=True)
    assert resumed.inputs_done == 0 and len(read_table(tmp_path / "t.parquet")) == 0  # nothing kept twice
    resumed.write([{"source": "a", "frame": frame} for frame in range(3)])
    resumed.finish_inputs(1)
    resumed.close()
    assert list(read_table(tmp_path / "t.parquet")["frame"]) == [0, 1, 2]


def test_the_lock_names_its_holder_and_is_free_after_release(tmp_path):
    target = tmp_path / "out.csv"
    with OutputLock(target):
        with pytest.raises(OutputInUseError, match=rf"another run \(pid {os.getpid()};"):
            OutputLock(target).acquire()
    with OutputLock(target):  # free again
        pass


# ------------------------------------------------------------------------------------------------ training


def tiny_training(recipe: str, data_dir, output_dir, **fields):
    from tests.runs import run_arguments

    defaults = dict(data_dir=str(data_dir), model_config="tiny", num_train_epochs=1, per_device_train_batch_size=8)
    if recipe == "emma":
        defaults.update(warmup_epochs=0.5, base_learning_rate=5e-3, drop_path_rate=0.0)
    return run_arguments(recipe, output_dir, **{**defaults, **fields})


@pytest.fixture(scope="module")
def small_abaw(tmp_path_factory):
    from affect_hf.data import make_synthetic_abaw

    return make_synthetic_abaw(tmp_path_factory.mktemp("abaw"), num_train=64, num_validation=16, num_test=2,
                               image_size=32)  # fmt: skip


def test_a_state_missing_a_file_is_skipped_naming_it(small_abaw, tmp_path, caplog):
    import logging

    from affect_hf.training import train
    from affect_hf.training.state import STATE_FILES_FILE, find_latest_state

    options = dict(max_steps=6, save_steps=2, save_total_limit=3)
    train(*tiny_training("emma", small_abaw, tmp_path, **options))
    latest = find_latest_state(tmp_path)
    (latest / "optimizer.bin").unlink()  # deleted, or never written by a crash
    earlier = sorted((tmp_path / "checkpoints").iterdir())[-2]
    (earlier / STATE_FILES_FILE).unlink()  # a state saved before the list was kept: checked by what accelerate writes
    (earlier / "scheduler.bin").unlink()
    caplog.set_level(logging.WARNING, logger="affect_hf")
    state = train(*tiny_training("emma", small_abaw, tmp_path, resume_from_checkpoint="latest", **options))
    assert f"{latest / 'optimizer.bin'} is missing" in caplog.text
    assert f"{earlier / 'scheduler.bin'} is missing" in caplog.text
    assert "resuming from the earlier intact state" in caplog.text and state["status"] == "completed"


def test_mostly_broken_training_images_train_on_what_is_good(tmp_path):
    from affect_hf.data import make_synthetic_faces
    from affect_hf.training import train

    faces = make_synthetic_faces(tmp_path / "faces", num_images=648, num_corrupt=600, seed=3)
    held_out = make_synthetic_faces(tmp_path / "held_out", num_images=16, seed=4)
    state = train(*tiny_training("mae", faces, tmp_path / "run", validation_dir=str(held_out), max_steps=8,
                                 warmup_epochs=0.0, base_learning_rate=1e-3))  # fmt: skip
    assert state["status"] == "completed" and state["global_step"] == 8
    assert state["unreadable_images"] > 30 and 0 < state["train_images"] < 8 * 8


def test_mae_defaults_fit_a_small_folder_and_a_short_run(tmp_path, caplog):
    import logging

    from affect_hf.data import make_synthetic_faces
    from affect_hf.training import train

    faces = make_synthetic_faces(tmp_path / "faces", num_images=320, seed=5)
    caplog.set_level(logging.INFO, logger="affect_hf")
    loop, mae = tiny_training("mae", faces, tmp_path / "run", max_steps=40, num_train_epochs=None)
    assert mae.num_validation_images is None and loop.warmup_epochs is None  # the recipe's: 40 of 800 epochs
    state = train(loop, mae)
    assert "16 held-out images" in caplog.text  # 5% of 320, not 1000
    assert "is longer than this --max_steps 40 run: scaled to 2 steps" in caplog.text
    assert state["global_step"] == 40 and state["history"][-1]["learning_rate"] < 1e-3  # the peak was passed


def test_two_trainings_into_one_output_dir_are_refused_at_once(small_abaw, tmp_path):
    from tests.runs import REPO_ROOT, as_flags

    flags = as_flags(*tiny_training("emma", small_abaw, tmp_path / "run", num_train_epochs=500))
    command = [sys.executable, str(REPO_ROOT / "scripts" / "train.py"), *flags]
    first = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    pid_file = tmp_path / ".run.lock.pid"
    wait_for(pid_file.exists, first)
    time.sleep(1.0)
    second = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert f"affect-hf train: error: {tmp_path / 'run'} is being written by another run (pid {first.pid};" in (
        second.stderr
    )
    first.kill()
    first.wait()
    # A used folder, and nothing to resume: one line each, no traceback.
    for extra, expected in (([], "holds another run"), (["--resume_from_checkpoint", "/nowhere"], "no training state")):
        result = subprocess.run([*command, *extra], capture_output=True, text=True, timeout=120)
        assert result.returncode == 1 and expected in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------------------ files


def test_saved_files_and_folders_follow_the_umask(emma_folder, inputs, tmp_path):
    from affect_hf.files import FILE_MODE, FOLDER_MODE

    umask = os.umask(0o022)
    os.umask(umask)
    assert (FILE_MODE, FOLDER_MODE) == (0o666 & ~umask, 0o777 & ~umask)
    folder = save_model_folder(tiny_emma_with_visible_heads(), tmp_path / "saved")
    assert folder.stat().st_mode & 0o777 == FOLDER_MODE
    assert {path.stat().st_mode & 0o777 for path in folder.iterdir()} == {FILE_MODE}
    affect_hf.inference.predict(inputs[0], emma_folder, tmp_path / "t.parquet", device="cpu", progress=False)
    assert (tmp_path / "t.parquet").stat().st_mode & 0o777 == FOLDER_MODE
    assert {path.stat().st_mode & 0o777 for path in (tmp_path / "t.parquet").iterdir()} == {FILE_MODE}
    if umask == 0o022:
        assert (FILE_MODE, FOLDER_MODE) == (0o644, 0o755)


def test_a_damaged_model_a_float_picture_a_cut_video_and_linked_folders(emma_folder, inputs, tmp_path, capsys):
    import av

    # A truncated model.safetensors: one line naming the folder.
    damaged = tmp_path / "damaged"
    save_model_folder(tiny_emma_with_visible_heads(), damaged)
    (damaged / "model.safetensors").write_bytes((damaged / "model.safetensors").read_bytes()[:2000])
    with pytest.raises(SystemExit):
        main(["predict", str(inputs[0]), "--model", str(damaged), "--output", str(tmp_path / "x.csv"), "--device",
              "cpu"])  # fmt: skip
    assert f"the weights in {damaged} cannot be read" in capsys.readouterr().err
    # A 32-bit float TIFF (values in [0, 1]) keeps its face.
    gray = np.asarray(Image.fromarray(astronaut()).convert("L"), dtype=np.float32) / 255
    Image.fromarray(gray, mode="F").save(tmp_path / "float.tif")
    assert len(affect_hf.analyze(tmp_path / "float.tif", emma_folder, device="cpu")) == 1
    # A video whose file breaks off (its index at the front, as phones write it): cut short, and said so.
    whole = tmp_path / "whole.mp4"
    with av.open(str(inputs[1])) as source, av.open(str(whole), "w", format="mp4",
                                                    options={"movflags": "faststart"}) as target:  # fmt: skip
        stream = target.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                target.mux(packet)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 55 // 100])
    main(["predict", str(cut), "--model", str(emma_folder), "--output", str(tmp_path / "cut.csv"), "--device", "cpu"])
    out = capsys.readouterr().out
    assert f"{cut}: cut short: its frames end at" in out and "of the 8.00 s its header declares" in out
    assert 0 < read_table(tmp_path / "cut.csv")["frame"].nunique() < 160
    # Linked folders are followed, each once; a loop is not walked again.
    photos = tmp_path / "photos"
    (photos / "real").mkdir(parents=True)
    Image.fromarray(astronaut()).save(photos / "real" / "face.jpg")
    (photos / "linked").symlink_to(photos / "real")
    (photos / "real" / "loop").symlink_to(photos)
    from affect_hf.files import walk_files

    assert [path.relative_to(photos).as_posix() for path in walk_files(photos)] == ["linked/face.jpg"]


@pytest.mark.parametrize("name", ["full.csv", "full.parquet"])
def test_a_full_disk_is_named_loses_no_finished_row_and_resumes(emma_folder, inputs, tmp_path, name):
    """The probe's "[Errno 27] File too large": a file-size limit on the process stands in for a full disk."""
    output = tmp_path / name
    script = (
        "import resource, signal\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))\n"
        "from affect_hf.cli import main\n"
        f"main(['predict', {str(inputs[0])!r}, {str(inputs[1])!r}, '--model', {str(emma_folder)!r}, '--output', "
        f"{str(output)!r}, '--device', 'cpu', '--batch_size', '4'])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    message = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and message.startswith(f"affect-hf predict: error: {output}: cannot write")
    assert "File too large" in message and "Traceback" not in result.stderr
    partial = read_table(output)
    assert len(partial) < 1 + 2 * 160 and read_progress(output)["rows"] <= len(partial)  # none counted unwritten
    if name.endswith(".csv"):
        assert output.read_bytes().endswith(b"\r\n")  # whole rows only
    main(["predict", str(inputs[0]), str(inputs[1]), "--model", str(emma_folder), "--output", str(output),
          "--device", "cpu", "--resume"])  # fmt: skip
    assert len(read_table(output)) == 1 + 2 * 160 and read_progress(output)["complete"]


def test_convert_reads_a_plain_pickle_and_tells_code_from_junk(tmp_path, capsys):
    import pickle

    import torch

    from tests.test_convert import dan_state

    with open(tmp_path / "dan.pkl", "wb") as handle:  # the authors' kind of file, written with pickle.dump
        pickle.dump({"model_state_dict": dan_state(torch.Generator().manual_seed(0))}, handle)
    main(["convert", str(tmp_path / "dan.pkl"), str(tmp_path / "dan"), "--allow-missing", "class_centers"])
    assert (tmp_path / "dan" / "model.safetensors").is_file()

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo ran > " + str(tmp_path / "ran"),))

    with open(tmp_path / "hostile.pkl", "wb") as handle:
        pickle.dump({"model_state_dict": {}, "x": Payload()}, handle)
    (tmp_path / "notes.pth").write_text("not a checkpoint")

    def short(text: str) -> bytes:
        return b"\x8c" + bytes([len(text)]) + text.encode()

    # A dotted name walks attributes from an allowed module to `eval`: refused by its name, never followed.
    walk = (b"\x80\x04" + short("numpy.dtypes") + short("_add_dtype_helper.__builtins__.get") + b"\x93"
            + short("eval") + b"\x85R" + short(f"open({str(tmp_path / 'ran')!r}, 'w')") + b"\x85R.")  # fmt: skip
    (tmp_path / "walk.pkl").write_bytes(walk)
    import numpy

    with open(tmp_path / "objects.pkl", "wb") as handle:  # numpy data that is not numbers: object pointers
        pickle.dump({"x": numpy.array([object()], dtype=object)}, handle)
    for name, expected in (("hostile.pkl", "needs code to load (posix.system): refused, never run"),
                           ("walk.pkl", "needs code to load (numpy.dtypes._add_dtype_helper"),
                           ("objects.pkl", "needs code to load (builtins.object)"),
                           ("notes.pth", "is not a checkpoint")):  # fmt: skip
        with pytest.raises(SystemExit):
            main(["convert", str(tmp_path / name), str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert expected in err and "weights_only=False" not in err and "weights_only` set to `False" not in err
    assert not (tmp_path / "ran").exists()
    # Numbers in numpy arrays and scalars (the authors' files hold some) are read, in either kind of file.
    from affect_hf.convert import load_checkpoint

    data = {"f1": numpy.array([[0.5, 0.25]], dtype=">f4"), "accuracy": numpy.float64(0.75)}
    torch.save(data, tmp_path / "scores.pth")
    with open(tmp_path / "scores.pkl", "wb") as handle:
        pickle.dump(data, handle)
    for name in ("scores.pth", "scores.pkl"):
        loaded = load_checkpoint(tmp_path / name)
        assert loaded["f1"].dtype == numpy.dtype(">f4") and loaded["f1"].tolist() == [[0.5, 0.25]]
        assert loaded["accuracy"] == 0.75
