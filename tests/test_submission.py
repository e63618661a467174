"""ABAW test-set predictions and submission files: writing, checking, resuming, and the commands."""

import numpy as np
import pytest
import torch

from affect_hf.cli import main as cli_main
from affect_hf.data import make_synthetic_abaw
from affect_hf.data.synthetic import TRACK_TEST_SAMPLE_FILES
from affect_hf.data.synthetic_faces import make_synthetic_lsd
from affect_hf.hub import save_model_folder
from affect_hf.inference import SubmissionError, abaw_test_names, predict_abaw, validate_submission
from affect_hf.inference.submission import Predictions, fill_frames_without_crop
from affect_hf.modeling import CotexConfig, CotexForImageClassification, EmmaConfig, EmmaForAffectAnalysis
from affect_hf.training.presets import COTEX_PRESETS, EMMA_PRESETS


@pytest.fixture(scope="module")
def mtl_root(tmp_path_factory):
    return make_synthetic_abaw(
        tmp_path_factory.mktemp("mtl"), num_train=8, num_validation=8, num_test=40, image_size=32
    )


@pytest.fixture(scope="module")
def emma_folder(tmp_path_factory):
    torch.manual_seed(0)
    model = EmmaForAffectAnalysis(EmmaConfig(**EMMA_PRESETS["tiny"], au_thresholds=[0.3] * 6 + [0.7] * 6)).eval()
    with torch.no_grad():  # a valence beyond [-1, 1], which the submission must clip
        model.va_head[2].bias.copy_(torch.tensor([1.5, 0.2]))
    return model, save_model_folder(model, tmp_path_factory.mktemp("emma") / "model")


def test_mtl_predictions_follow_the_test_list_and_the_models_thresholds(mtl_root, emma_folder, tmp_path):
    model, folder = emma_folder
    output = predict_abaw(folder, mtl_root, "mtl", tmp_path / "mtl.txt", batch_size=16, num_workers=0)
    names = abaw_test_names(mtl_root, "mtl")
    assert validate_submission(output, "mtl", names) == 40
    lines = output.read_text().splitlines()
    assert lines[0] == "image,valence,arousal,expression,aus" and [line.split(",")[0] for line in lines[1:]] == names
    values = np.array([[float(field) for field in line.split(",")[1:]] for line in lines[1:]])
    assert np.abs(values[:, :2]).max() == 1.0, "valence/arousal clipped to [-1, 1]"

    from affect_hf.data import AbawMtlTorchDataset, load_abaw_mtl

    dataset = AbawMtlTorchDataset(load_abaw_mtl(mtl_root, "test"), image_size=32, train=False)
    with torch.no_grad():
        outputs = model(torch.stack([dataset[index]["pixel_values"] for index in range(len(dataset))]))
    np.testing.assert_allclose(values[:, :2], outputs.valence_arousal.clamp(-1, 1).numpy(), atol=1e-5)
    np.testing.assert_array_equal(values[:, 2], outputs.logits.argmax(-1).numpy())
    decisions = torch.sigmoid(outputs.au_logits) >= torch.tensor([0.3] * 6 + [0.7] * 6)
    np.testing.assert_array_equal(values[:, 3:], decisions.int().numpy())
    assert not (tmp_path / "mtl.txt.partial.npz").exists()


def test_a_stopped_prediction_resumes_to_the_same_file(mtl_root, emma_folder, tmp_path):
    _, folder = emma_folder
    whole = predict_abaw(folder, mtl_root, "mtl", tmp_path / "whole.txt", batch_size=8, num_workers=0)
    output = tmp_path / "resumed.txt"
    assert predict_abaw(folder, mtl_root, "mtl", output, batch_size=8, num_workers=0, max_batches=2) is None
    assert not output.exists() and (tmp_path / "resumed.txt.partial.npz").is_file()
    with np.load(tmp_path / "resumed.txt.partial.npz") as saved:
        assert int(saved["done"]) == 16
    predict_abaw(folder, mtl_root, "mtl", output, batch_size=8, num_workers=0)
    assert output.read_text() == whole.read_text()


def test_the_lsd_track_with_a_cotex_model(tmp_path):
    root = make_synthetic_lsd(tmp_path / "lsd", num_train_per_class=1, num_validation_per_class=2, image_size=32)
    names = sorted(p.relative_to(root).as_posix() for p in (root / "validation_set_real_images").rglob("*.jpg"))
    (root / "LSD_test_set_release.txt").write_text("image\n" + "\n".join(names) + "\n")
    model = CotexForImageClassification(CotexConfig(**COTEX_PRESETS["tiny"])).eval()
    folder = save_model_folder(model, tmp_path / "cotex")
    output = predict_abaw(folder, root, "lsd", tmp_path / "lsd.txt", batch_size=5, num_workers=0)
    lines = output.read_text().splitlines()
    assert lines[0] == "image,expression" and len(lines) == 13
    assert {int(line.split(",")[1]) for line in lines[1:]} <= set(range(6))
    with pytest.raises(ValueError, match="the MTL track needs an EMMA"):
        predict_abaw(folder, make_synthetic_abaw(tmp_path / "mtl", num_train=2, num_validation=2, num_test=2), "mtl",
                     tmp_path / "x.txt", num_workers=0)  # fmt: skip


def _with_field(lines: list[str], field: int, value: str) -> list[str]:
    """The submission with field `field` of its first prediction replaced."""
    fields = lines[1].split(",")
    fields[field] = value
    return [lines[0], ",".join(fields), *lines[2:]]


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (
            lambda lines: lines[:1] + lines[2:],
            r"line 2: expected 'test_000/00001.jpg' \(the test list's image 1\), found 'test_000/00002.jpg' "
            r"\(listed at line 3",
        ),
        (
            lambda lines: lines[:-1],
            r"1 test images have no line, from 'test_001/00008.jpg' \(line 41 of a complete file\)",
        ),
        (lambda lines: [*lines, lines[-1]], r"line 42: 'test_001/00008.jpg' is one line more than the 40 test images"),
        (lambda lines: _with_field(lines, 3, "9"), r"line 2: the expression must be an integer in 0\.\.7"),
        (lambda lines: _with_field(lines, 1, "1.5"), r"line 2: valence and arousal must lie in \[-1, 1\]"),
        (lambda lines: _with_field(lines, 15, "2"), "line 2: action units must be 0 or 1"),
        (lambda lines: _with_field(lines, 15, "0,1"), "line 2: expected 16 comma-separated fields, found 17"),
        (lambda lines: ["image,v,a", *lines[1:]], "line 1: expected the header 'image,valence,arousal,expression,aus'"),
        (lambda lines: _with_field(lines, 0, "elsewhere/00001.jpg"), "not in the test list"),
    ],
)
def test_a_corrupted_submission_is_reported_with_its_line(mtl_root, emma_folder, tmp_path, corrupt, message):
    _, folder = emma_folder
    good = predict_abaw(folder, mtl_root, "mtl", tmp_path / "good.txt", num_workers=0)
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(corrupt(good.read_text().splitlines())) + "\n")
    with pytest.raises(SubmissionError, match=message):
        validate_submission(bad, "mtl", abaw_test_names(mtl_root, "mtl"))


def test_the_commands_predict_and_validate(mtl_root, emma_folder, tmp_path, capsys):
    _, folder = emma_folder
    output = tmp_path / "cli.txt"
    cli_main(["predict-abaw", "--model", str(folder), "--data_dir", str(mtl_root), "--track", "mtl", "--output",
              str(output), "--num_workers", "0"])  # fmt: skip
    assert capsys.readouterr().out.strip().endswith("cli.txt")
    cli_main(["validate-submission", str(output), "--track", "mtl", "--data_dir", str(mtl_root)])
    assert "40 predictions, every test image once and in order" in capsys.readouterr().out
    output.write_text(output.read_text().replace("test_000/00003.jpg", "test_000/00004.jpg", 1))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["validate-submission", str(output), "--track", "mtl", "--data_dir", str(mtl_root)])
    assert exit_info.value.code == 1 and "line 4: expected 'test_000/00003.jpg'" in capsys.readouterr().err


def test_missing_test_images_are_refused_before_predicting(tmp_path, emma_folder):
    root = make_synthetic_abaw(tmp_path / "mtl", num_train=2, num_validation=2, num_test=6, image_size=32)
    (root / "cropped_aligned" / "test_000" / "00002.jpg").unlink()
    with (
        pytest.warns(UserWarning, match="Skipped 1 of 6"),
        pytest.raises(FileNotFoundError, match="1 of the 6 test images"),
    ):
        predict_abaw(emma_folder[1], root, "mtl", tmp_path / "out.txt", num_workers=0)
    assert not (tmp_path / "out.txt").exists()


@pytest.fixture(scope="module")
def tracks_root(tmp_path_factory):
    # 40 test frames in two videos of 32 and 8; frames 6, 17, 28 and 39 (1-based) have no crop.
    return make_synthetic_abaw(
        tmp_path_factory.mktemp("tracks"), num_train=8, num_validation=8, num_test=40, image_size=32, layout="tracks"
    )


@pytest.mark.parametrize("track", ["va", "expr", "au"])
def test_uni_task_files_cover_every_frame_of_the_test_list(tracks_root, emma_folder, tmp_path, track, caplog):
    model, folder = emma_folder
    test_list = tracks_root / TRACK_TEST_SAMPLE_FILES[track]
    output = predict_abaw(folder, tracks_root, track, tmp_path / f"{track}.txt", batch_size=16, num_workers=0,
                          test_list=test_list)  # fmt: skip
    names = abaw_test_names(tracks_root, track, test_list)
    assert len(names) == 40 and validate_submission(output, track, names) == 40
    lines = output.read_text().splitlines()
    assert (
        lines[0]
        == {
            "va": "image_location,valence,arousal",
            "expr": "image_location,Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other",
            "au": "image_location,AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26",
        }[track]
    )
    assert [line.split(",")[0] for line in lines[1:]] == names
    values = {line.split(",")[0]: [float(v) for v in line.split(",")[1:]] for line in lines[1:]}

    from affect_hf.data import AbawMtlTorchDataset

    present = [name for name in names if (tracks_root / "cropped_aligned" / name).is_file()]
    assert len(present) == 36
    dataset = AbawMtlTorchDataset(load_abaw_track_test(tracks_root, present), image_size=32, train=False)
    with torch.no_grad():
        outputs = model(torch.stack([dataset[index]["pixel_values"] for index in range(len(dataset))]))
    expected = {
        "va": outputs.valence_arousal.clamp(-1, 1).numpy(),
        "expr": outputs.logits.argmax(-1, keepdim=True).numpy(),
        "au": (torch.sigmoid(outputs.au_logits) >= torch.tensor([0.3] * 6 + [0.7] * 6)).int().numpy(),
    }[track]
    np.testing.assert_allclose([values[name] for name in present], expected, atol=1e-5)
    # A frame without a crop takes its video's nearest frame, the earlier on a tie (frames 5 and 7 for frame 6).
    assert values["test_000/00006.jpg"] == values["test_000/00005.jpg"]
    assert values["test_001/00007.jpg"] == values["test_001/00006.jpg"]
    assert "4 of 40 test frames have no crop" in caplog.text


def load_abaw_track_test(root, names):
    from affect_hf.data.abaw_mtl import abaw_frame_table

    count = len(names)
    return abaw_frame_table(
        names, root / "cropped_aligned", np.full((count, 2), -5.0, np.float32), np.full(count, -1, np.int64),
        np.full((count, 12), -1, np.int8), "test", "test", root,
    )  # fmt: skip


def test_nearest_frame_filling_and_a_video_without_any_crop():
    predictions = Predictions.empty(3)
    predictions.valence_arousal[:] = [[0.1, 0.1], [0.2, 0.2], [0.9, 0.9]]
    predictions.expression[:] = [1, 2, 3]
    predictions.action_units[:] = [[1] * 12, [0] * 12, [1, 0] * 6]
    predicted = ["a/00002.jpg", "a/00010.jpg", "b/00001.jpg"]
    names = ["a/00001.jpg", "a/00002.jpg", "a/00006.jpg", "a/00007.jpg", "a/00012.jpg", "b/00003.jpg", "c/00001.jpg"]
    filled = fill_frames_without_crop(names, predicted, predictions)
    # a/6 is as near to a/2 as to a/10: the earlier wins; a/7 is nearer a/10; c has no crop at all: neutral.
    assert filled.expression.tolist() == [1, 1, 1, 2, 2, 3, 0]
    np.testing.assert_array_equal(filled.valence_arousal[-1], [0.0, 0.0])
    assert filled.action_units[-1].tolist() == [0] * 12 and filled.action_units[5].tolist() == [1, 0] * 6


def test_uni_task_validation_names_the_bad_line_and_the_commands(tracks_root, emma_folder, tmp_path, capsys):
    _, folder = emma_folder
    test_list = tracks_root / TRACK_TEST_SAMPLE_FILES["va"]
    names = abaw_test_names(tracks_root, "va", test_list)
    good = tmp_path / "va.txt"
    cli_main(["predict-abaw", "--model", str(folder), "--data_dir", str(tracks_root), "--track", "va",
              "--output", str(good), "--test_list", str(test_list), "--num_workers", "0"])  # fmt: skip
    lines = good.read_text().splitlines()
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(lines[:3] + [lines[3].rsplit(",", 1)[0] + ",1.5"] + lines[4:]) + "\n")
    with pytest.raises(SubmissionError, match=r"line 4: valence and arousal must lie in \[-1, 1\]"):
        validate_submission(bad, "va", names)
    bad.write_text("\n".join(lines[:5] + lines[6:]) + "\n")  # a frame left out
    with pytest.raises(SubmissionError, match=f"line 6: expected '{names[4]}'"):
        validate_submission(bad, "va", names)
    with pytest.raises(SubmissionError, match="line 1: expected the header 'image_location,Neutral"):
        validate_submission(good, "expr", names)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["validate-submission", str(bad), "--track", "va", "--test_list", str(test_list)])
    assert exit_info.value.code == 1 and "line 6" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["validate-submission", str(good), "--track", "au"])
    assert "needs --test_list" in capsys.readouterr().err


def test_uni_task_tracks_refuse_a_model_that_cannot_answer_them(tracks_root, tmp_path):
    model = CotexForImageClassification(CotexConfig(**COTEX_PRESETS["tiny"])).eval()
    folder = save_model_folder(model, tmp_path / "cotex")
    for track, message in (("va", "the VA track needs an EMMA"), ("expr", "the expr track needs the ABAW order")):
        with pytest.raises(ValueError, match=message):
            predict_abaw(folder, tracks_root, track, tmp_path / "x.txt", num_workers=0,
                         test_list=tracks_root / TRACK_TEST_SAMPLE_FILES[track])  # fmt: skip


def test_a_bad_frame_list_names_its_line(tmp_path):
    from affect_hf.inference.submission import read_frame_list

    path = tmp_path / "list.txt"
    path.write_text("image_location,valence,arousal\nvideo_1/00001.jpg,0,0\n\nvideo_1/cover.jpg,0,0\n")
    with pytest.raises(
        ValueError, match=r"list.txt, line 4: expected <video>/<frame number>.jpg, found 'video_1/cover"
    ):
        read_frame_list(path)
    path.write_text("video_1/00001.jpg\nvideo_1/00002.jpg\n")  # no header
    assert read_frame_list(path) == ["video_1/00001.jpg", "video_1/00002.jpg"]
