"""Corpus runs across processes: files shared out by size, one shard per process in one Parquet folder, the same
rows as one process, a kill midway resumed (also with another process count), one launch per output, and the
refusals a launch makes before it reads a file. Real two-process launches (gloo on CPU) for the end to end."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pyarrow as pa
import pytest
from PIL import Image
from skimage.data import astronaut

import affect_hf
from affect_hf.cli import main
from affect_hf.data.synthetic_video import write_face_video
from affect_hf.hub import save_model_folder
from affect_hf.inference.corpus import CorpusProgress, Launch, assign_by_size, check_corpus_output, plan_corpus
from affect_hf.inference.media import expand_inputs
from affect_hf.inference.table import TableWriter, read_table, shard_records
from tests.runs import REPO_ROOT
from tests.test_modeling import tiny_emma_with_visible_heads
from tests.test_nothing_lost import assert_same_table


FACE = astronaut()[40:300, 110:350]
LAUNCH = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip


@pytest.fixture(scope="module")
def emma_folder(tmp_path_factory) -> Path:
    return save_model_folder(tiny_emma_with_visible_heads(), tmp_path_factory.mktemp("corpus") / "emma")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """3 videos of two faces (one long enough for a kill to land in it) and 3 photos."""
    folder = tmp_path_factory.mktemp("corpus_media")
    for name, frames in (("interview", 96), ("panel", 24), ("street", 12)):
        write_face_video(folder / f"{name}.mp4", FACE, num_frames=frames, fps=12, size=(384, 216))
    photo = Image.fromarray(astronaut())
    photo.save(folder / "photo.jpg")
    photo.transpose(Image.FLIP_LEFT_RIGHT).save(folder / "mirrored.jpg")
    photo.resize((256, 256)).save(folder / "small.jpg")
    return folder


def launch_two(arguments: list[str], **popen) -> subprocess.Popen:
    """Two real processes of one launch on CPU (gloo), as HF-NOTES gives it: `accelerate launch --multi_gpu`."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, *LAUNCH, *arguments], env=env, text=True, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)  # fmt: skip


def finished(process: subprocess.Popen, timeout: float = 300) -> tuple[str, str]:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return out, err


def test_two_processes_give_one_process_s_rows_and_both_did_work(emma_folder, corpus, tmp_path):
    expected = affect_hf.analyze(corpus, emma_folder, device="cpu")
    output = tmp_path / "affect.parquet"
    out, _ = finished(launch_two(["-m", "affect_hf", "predict", str(corpus), "--model", str(emma_folder),
                                  "--device", "cpu", "--output", str(output)]))  # fmt: skip
    table = read_table(output)
    assert_same_table(table, expected)
    records = shard_records(output)
    assert sorted(records) == ["000-0000", "000-0001"] and all(record["complete"] for record in records.values())
    given = [set(record["inputs"]) for record in records.values()]
    assert given[0] and given[1] and not given[0] & given[1] and len(given[0] | given[1]) == 6  # each file once
    assert all(record["rows"] > 0 for record in records.values())  # both processes did work
    assert f"{output}: {len(expected)} rows" in out and "2 processes" in out and out.count("rows") == 1
    loaded = datasets.load_dataset("parquet", data_dir=str(output), split="train")
    assert loaded.num_rows == len(expected) and loaded.column_names == list(expected.columns)


def test_a_killed_launch_resumes_to_the_same_table_with_any_process_count(emma_folder, corpus, tmp_path, capsys):
    expected = affect_hf.analyze(corpus, emma_folder, device="cpu")
    output = tmp_path / "affect.parquet"
    script = tmp_path / "run.py"
    script.write_text(  # parts of 8 rows, so that the kill finds several on disk
        "from affect_hf.inference import predict\n"
        f"predict({str(corpus)!r}, {str(emma_folder)!r}, {str(output)!r}, device='cpu', batch_size=4, "
        "progress=False, rows_per_part=8, flush_seconds=0)\n"
    )
    process = launch_two([str(script)])
    deadline = time.monotonic() + 240
    while not any(record["inputs_done"] for record in _records(output)):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no input finished in time"
        time.sleep(0.05)
    # A second run into the folder while the launch writes it: refused at once, naming the first process.
    with pytest.raises(SystemExit):
        main(["predict", str(corpus), "--model", str(emma_folder), "--output", str(output), "--overwrite"])
    assert "is being written by another run (pid " in capsys.readouterr().err
    # One process dies: the launcher ends the other (workers run in sessions of their own) and fails.
    os.kill(_workers(process.pid)[0], signal.SIGKILL)
    assert process.wait(timeout=120) != 0
    records = shard_records(output)
    assert not all(record["complete"] for record in records.values())  # killed midway
    partial = read_table(output)  # readable as it is
    assert 0 < len(partial) < len(expected)
    # Resumed by one process: every file some process finished is kept, the rest redone; no file twice.
    main(["predict", str(corpus), "--model", str(emma_folder), "--output", str(output), "--device", "cpu",
          "--resume"])  # fmt: skip
    assert_same_table(read_table(output), expected)
    assert any(shard.startswith("001-") for shard in shard_records(output))  # the resume's own shard
    # Resumed again by two processes: everything is finished, nothing changes.
    finished(launch_two(["-m", "affect_hf", "predict", str(corpus), "--model", str(emma_folder), "--device", "cpu",
                         "--output", str(output), "--resume"]))  # fmt: skip
    assert_same_table(read_table(output), expected)


def test_processes_that_see_different_inputs_are_refused_together(emma_folder, corpus, tmp_path):
    """Inputs are handed out by position: a process whose folder listing differs from the first's (another mount,
    a file arriving mid-start) would analyse the wrong files. Every process compares, and all refuse."""
    script = tmp_path / "run.py"
    script.write_text(
        "import os\nfrom affect_hf.inference import predict\n"
        f"files = sorted(os.listdir({str(corpus)!r}))[: 2 + int(os.environ['RANK'])]\n"
        f"predict([os.path.join({str(corpus)!r}, name) for name in files], {str(emma_folder)!r}, "
        f"{str(tmp_path / 'affect.parquet')!r}, device='cpu', progress=False)\n"
    )
    process = launch_two([str(script)])
    _, err = process.communicate(timeout=300)
    assert process.returncode != 0
    assert err.count("the processes of this launch do not see the same run (inputs, num_inputs differ") == 2
    assert not (tmp_path / "affect.parquet").exists() or not list((tmp_path / "affect.parquet").glob("part-*"))


def _workers(launcher: int) -> list[int]:
    """The launcher's child processes (the launch's workers), from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == launcher:
            children.append(int(stat.parent.name))
    assert children, "no worker found"
    return sorted(children)


def _records(output: Path) -> list[dict]:
    try:
        return list(shard_records(output).values())
    except (OSError, ValueError):  # a record being replaced
        return []


def test_files_are_shared_out_largest_first_so_processes_finish_together():
    sizes = [10, 90, 30, 30, 40, 5, 5]
    shares = assign_by_size(list(range(7)), sizes, 2)
    # 90, 40, 30, 30, 10, 5, 5 in turn to the least loaded: 90 | 40 + 30 + 30, then 10 and 5 | 5. Even.
    assert shares == [[0, 1, 5], [2, 3, 4, 6]]  # each process's files in the given order
    assert assign_by_size([0, 1], [5, 5], 4) == [[0], [1], [], []]  # more processes than files: some get none
    # Inputs of unknown size (pictures in memory, dataset rows that keep only a path) are dealt out in turn.
    assert assign_by_size([0, 1, 2, 3], [0, 0, 0, 0], 2) == [[0, 2], [1, 3]]


def test_the_plan_keeps_what_any_shard_finished_and_cuts_the_rest(tmp_path):
    output = tmp_path / "table.parquet"
    schema = pa.schema([("source", pa.string()), ("frame", pa.int64())])
    fingerprint = {"inputs": "abc", "num_inputs": 5}
    sizes = [1, 1, 1, 1, 1]
    plan = plan_corpus(output, schema, fingerprint, sizes, 2, resume=False)
    assert plan.launch == 0 and sorted(plan.inputs[0] + plan.inputs[1]) == [0, 1, 2, 3, 4]
    # Shard 0 finished inputs 0 and 2 and was killed in 4; shard 1 finished 1 and 3.
    first = TableWriter(output, schema, fingerprint, rows_per_part=1, flush_seconds=0, shard="000-0000",
                        inputs=[0, 2, 4])  # fmt: skip
    for count, source in enumerate(["a", "c"], start=1):
        first.write([{"source": source, "frame": 0}])
        first.finish_inputs(count)
        first.flush()
    first.write([{"source": "e", "frame": 0}])  # of input 4, unfinished
    first.flush(force=True)
    first.lock.release()  # killed: its record says 2 of its 3 inputs
    second = TableWriter(output, schema, fingerprint, shard="000-0001", inputs=[1, 3])
    second.write([{"source": "b", "frame": 0}, {"source": "d", "frame": 0}])
    second.finish_inputs(2)
    second.close()
    assert len(read_table(output)) == 5
    plan = plan_corpus(output, schema, fingerprint, sizes, 3, resume=True)
    assert plan.launch == 1 and plan.finished == 4 and sum(plan.inputs, []) == [4]
    assert sorted(read_table(output)["source"]) == ["a", "b", "c", "d"]  # input 4's row cut away
    with pytest.raises(ValueError, match=r"\(num_inputs changed\)"):
        plan_corpus(output, schema, {**fingerprint, "num_inputs": 6}, sizes + [1], 2, resume=True)
    # A process that failed says so in its record: the first process stops waiting, naming its shard.
    failed = TableWriter(output, schema, fingerprint, shard="001-0000", inputs=[4], lock=False)
    failed.stats = {"failed": True}
    failed.close(complete=False)
    with pytest.raises(RuntimeError, match="the process writing shard 001-0000 of .* failed"):
        CorpusProgress(output, ["001-0000"]).wait(poll_seconds=0.01)


def test_a_launch_refuses_a_csv_and_more_processes_than_gpus_before_reading(monkeypatch):
    with pytest.raises(ValueError, match="a CSV output is one file, which 2 processes cannot share"):
        check_corpus_output("affect.csv", 2)
    check_corpus_output("affect.parquet", 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"--device cuda: 2 processes on this machine, but it has 0 GPU\(s\)"):
        Launch.current("cuda")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert Launch.current("auto") == Launch(0, 1, "auto")


def test_a_text_file_lists_the_inputs_and_a_bad_line_is_named(corpus, tmp_path):
    listing = tmp_path / "corpus.txt"
    listing.write_text(f"# the lab's videos\n{corpus / 'panel.mp4'}\n\n../{tmp_path.name}/photos\n")
    (tmp_path / "photos").mkdir()
    Image.fromarray(astronaut()).save(tmp_path / "photos" / "a.jpg")
    assert expand_inputs([listing]) == [corpus / "panel.mp4", tmp_path / "photos" / "a.jpg"]
    listing.write_text(f"{corpus / 'panel.mp4'}\nmissing.mp4\n")
    with pytest.raises(FileNotFoundError, match=r"corpus\.txt:2: no such file or folder: missing\.mp4"):
        expand_inputs([listing])


def test_a_dataset_s_image_and_video_columns_are_read_like_files(emma_folder, corpus, tmp_path, capsys):
    """`--dataset DIR --split S --column C`: rows of a `datasets` dataset (a save_to_disk folder here) give the rows
    their files give, named NAME[SPLIT][INDEX]; a broken row and a bomb row are skipped and listed, by row. A Video
    column reads the same way (here through the notebook API)."""
    from affect_hf.inference.media import input_size
    from tests.test_api import png_header

    photos = [corpus / "photo.jpg", corpus / "small.jpg"]
    stored = [{"bytes": path.read_bytes(), "path": None} for path in photos]
    stored += [{"bytes": b"not a picture", "path": None}, {"bytes": png_header(50000, 50000), "path": None}]
    features = datasets.Features({"face": datasets.Image(decode=False), "label": datasets.Value("string")})
    pictures = datasets.Dataset.from_dict({"face": stored, "label": list("abcd")}, features=features)
    folder = tmp_path / "faces_dataset"
    datasets.DatasetDict({"test": pictures}).save_to_disk(str(folder))

    output = tmp_path / "affect.parquet"
    main(["predict", "--dataset", str(folder), "--split", "test", "--model", str(emma_folder), "--device", "cpu",
          "--output", str(output)])  # fmt: skip
    out = capsys.readouterr().out
    expected = affect_hf.analyze(photos, emma_folder, device="cpu")
    expected["source"] = expected["source"].map({str(path): f"faces_dataset[test][{i}]" for i, path in
                                                 enumerate(photos)})  # fmt: skip
    assert_same_table(read_table(output), expected)
    assert "skipped faces_dataset[test][2]: neither an image nor a video" in out
    assert "skipped faces_dataset[test][3]: " in out and "decompression bomb" in out
    # A Video column, read by PyAV from the row's bytes: the video's own rows.
    video = corpus / "street.mp4"
    clips = datasets.Dataset.from_dict({"clip": [{"bytes": video.read_bytes(), "path": None}]},
                                       features=datasets.Features({"clip": datasets.Video(decode=False)}))  # fmt: skip
    from_rows = affect_hf.analyze(affect_hf.dataset_rows(clips, name="clips"), emma_folder, device="cpu")
    from_file = affect_hf.analyze(video, emma_folder, device="cpu")
    from_file["source"] = "clips[0]"
    assert_same_table(from_rows, from_file)
    # The rows' bytes weigh them for sharing out among processes; a column that is no picture is refused.
    assert [input_size(row) for row in affect_hf.dataset_rows(pictures)] == [len(entry["bytes"]) for entry in stored]
    reordered = affect_hf.dataset_rows(pictures.select([1, 0]))  # the rows as selected, not as stored
    assert [input_size(row) for row in reordered] == [len(stored[1]["bytes"]), len(stored[0]["bytes"])]
    assert reordered[1].open().getvalue() == stored[0]["bytes"]
    with pytest.raises(ValueError, match="column 'label' is Value"):
        affect_hf.dataset_rows(pictures, "label")
    with pytest.raises(SystemExit):
        main(["predict", "--dataset", str(folder), "--split", "validation", "--model", str(emma_folder),
              "--output", str(tmp_path / "other.parquet")])  # fmt: skip
    assert "has no split 'validation'; its splits: test" in capsys.readouterr().err
