"""Faults of a training run, tried as a careless user would: every one gets a clear error or is skipped and
counted, and none loses the results a run already has."""

import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from affect_hf.data import make_synthetic_abaw
from affect_hf.modeling import EmmaForAffectAnalysis
from affect_hf.training import NonFiniteLossError, TrainingArguments, train
from affect_hf.training.state import CorruptStateError, find_latest_state, select_resume_state
from tests.runs import REPO_ROOT, as_flags, run_arguments, wait_for


@pytest.fixture(scope="module")
def small_abaw(tmp_path_factory):
    """64 training and 16 validation frames of 32 px: 8 steps per epoch at batch 8."""
    return make_synthetic_abaw(
        tmp_path_factory.mktemp("small_abaw"), num_train=64, num_validation=16, num_test=2, image_size=32
    )


def train_fingerprint(output_dir):
    """The fingerprint the run in `output_dir` recorded (what a resume must match)."""
    return json.loads((output_dir / "training_history.json").read_text())["run"]


def emma_run(data_dir, output_dir, **overrides):
    fields = dict(
        data_dir=str(data_dir),
        model_config="tiny",
        num_train_epochs=1,
        warmup_epochs=0.5,
        per_device_train_batch_size=8,
        base_learning_rate=5e-3,
        drop_path_rate=0.0,
    )
    return run_arguments("emma", output_dir, **{**fields, **overrides})


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_state_and_model(small_abaw, tmp_path):
    # A learning rate of 1000, reached by the end of a 3-epoch warmup, blows the weights up during epoch 1.
    args = emma_run(small_abaw, tmp_path, num_train_epochs=3, warmup_epochs=3, learning_rate=1000.0, max_grad_norm=0.0)
    with pytest.raises(NonFiniteLossError, match=r"the training loss is nan at step 10 \(epoch 1"):
        train(*args)
    assert [path.name for path in (tmp_path / "checkpoints").iterdir()] == ["step_00000008"]
    history = json.loads((tmp_path / "training_history.json").read_text())
    assert history["status"].startswith("failed: the training loss is nan at step 10")
    assert [entry["step"] for entry in history["history"]] == [8] and history["saved_model_step"] == 8
    # The saved model is epoch 0's, finite, and equal to the last good state's weights.
    saved = EmmaForAffectAnalysis.from_pretrained(tmp_path / "best_model").state_dict()
    state = load_file(tmp_path / "checkpoints" / "step_00000008" / "model.safetensors")
    assert set(state) <= set(saved)
    for key, value in state.items():
        assert torch.isfinite(value.float()).all() and torch.equal(saved[key], value), key


def test_a_used_output_dir_is_refused_unless_resumed_or_overwritten(small_abaw, tmp_path):
    train(*emma_run(small_abaw, tmp_path))
    (tmp_path / "notes.txt").write_text("the user's own file")
    with pytest.raises(
        FileExistsError, match="holds another run .*--resume_from_checkpoint latest .*--overwrite_output_dir"
    ):
        train(*emma_run(small_abaw, tmp_path))

    state = train(*emma_run(small_abaw, tmp_path, overwrite_output_dir=True, max_steps=3))
    assert state["global_step"] == 3
    assert [path.name for path in (tmp_path / "checkpoints").iterdir()] == ["step_00000003"], "old states deleted"
    assert (tmp_path / "notes.txt").read_text() == "the user's own file", "only the run's own files are deleted"

    # The script refuses too, with a non-zero exit and the reason on stderr.
    loop, emma = emma_run(small_abaw, tmp_path)
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "train.py"), "--data_dir", emma.data_dir, "--output_dir",
         str(tmp_path), "--model_config", "tiny", "--report_to", "none"],
        capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(REPO_ROOT), "PATH": ""},
    )  # fmt: skip
    assert result.returncode != 0 and "holds another run" in result.stderr


def test_resuming_with_another_batch_or_learning_rate_is_refused_naming_the_differences(small_abaw, tmp_path):
    train(*emma_run(small_abaw, tmp_path, num_train_epochs=2, max_steps=5, save_steps=2))
    loop, emma = emma_run(small_abaw, tmp_path, num_train_epochs=2, max_steps=5, resume_from_checkpoint="latest")
    with pytest.raises(ValueError, match=r"differs from the saved one \(learning_rate 0.00015625 -> 0.001\)"):
        train(dataclasses.replace(loop, learning_rate=1e-3), emma)
    # Half the batch at twice the base rate keeps the rate: only the batch and the epoch length differ.
    halved = dataclasses.replace(loop, per_device_train_batch_size=4, base_learning_rate=1e-2)
    with pytest.raises(ValueError, match=r"\(effective_batch_size 8 -> 4; steps_per_epoch 8 -> 16\)"):
        train(halved, emma)
    assert select_resume_state(tmp_path, "latest", train_fingerprint(tmp_path))[0].name == "step_00000005"


def test_a_corrupt_latest_state_falls_back_to_an_intact_one(small_abaw, tmp_path, caplog):
    options = dict(max_steps=6, save_steps=2, save_total_limit=3)
    train(*emma_run(small_abaw, tmp_path, **options))
    latest = find_latest_state(tmp_path)
    assert latest.name == "step_00000006"
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])

    loop, emma = emma_run(small_abaw, tmp_path, resume_from_checkpoint=str(latest), **options)
    with pytest.raises(CorruptStateError, match=r"model.safetensors.*intact earlier states: .*step_00000004"):
        train(loop, emma)

    caplog.set_level(logging.WARNING, logger="affect_hf")
    state = train(dataclasses.replace(loop, resume_from_checkpoint="latest"), emma)
    assert f"training state {latest} is corrupt" in caplog.text and "step_00000004" in caplog.text
    assert state["global_step"] == 6 and state["status"] == "completed"
    assert find_latest_state(tmp_path).name == "step_00000006"
    load_file(find_latest_state(tmp_path) / "model.safetensors")  # rewritten whole


def test_a_best_model_left_hidden_by_a_crash_is_restored(small_abaw, tmp_path):
    train(*emma_run(small_abaw, tmp_path, max_steps=2))
    (tmp_path / "best_model").rename(tmp_path / ".best_model.old")  # a crash between the two renames
    state = train(*emma_run(small_abaw, tmp_path, max_steps=2, resume_from_checkpoint="latest"))
    assert state["status"] == "completed" and (tmp_path / "best_model" / "model.safetensors").is_file()
    assert not (tmp_path / ".best_model.old").exists()


def test_unreadable_training_images_are_skipped_and_counted(tmp_path):
    data_dir = make_synthetic_abaw(tmp_path / "data", num_train=64, num_validation=16, num_test=2, image_size=32)
    broken = sorted((data_dir / "cropped_aligned").glob("train_*/*.jpg"))[:3]
    broken[0].write_bytes(b"not a jpeg")
    broken[1].write_bytes(broken[1].read_bytes()[:200])  # truncated
    broken[2].write_bytes(b"")
    state = train(*emma_run(data_dir, tmp_path / "run", num_train_epochs=2))
    assert state["unreadable_images"] == 6, "3 bad images, met once per epoch"
    assert [entry["unreadable_images"] for entry in state["history"]] == [3, 6]
    assert state["status"] == "completed"

    with pytest.raises(OSError, match="3 training images could not be decoded by step .*--max_bad_images 2"):
        train(*emma_run(data_dir, tmp_path / "strict", max_bad_images=2))


def test_an_unreadable_validation_image_fails_before_the_first_step(tmp_path):
    data_dir = make_synthetic_abaw(tmp_path / "data", num_train=16, num_validation=8, num_test=2, image_size=32)
    bad = sorted((data_dir / "cropped_aligned").glob("validation_*/*.jpg"))[5]
    bad.write_bytes(b"GIF89a broken")
    with pytest.raises(OSError, match=f"validation image cannot be read: Cannot decode image {bad}"):
        train(*emma_run(data_dir, tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_output_dir_that_cannot_be_written_fails_at_once(small_abaw, tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(PermissionError, match="is not writable"):
        train(*emma_run(small_abaw, tmp_path / "a_file" / "run"))
    with pytest.raises(NotADirectoryError, match="a_file is a file, not a folder"):
        train(*emma_run(small_abaw, tmp_path / "a_file"))


def test_resuming_on_other_data_is_refused(small_abaw, tmp_path):
    train(*emma_run(small_abaw, tmp_path / "run", max_steps=2))
    other = make_synthetic_abaw(tmp_path / "other", num_train=64, num_validation=16, num_test=2, image_size=32, seed=1)
    with pytest.raises(ValueError, match=r"differs from the saved one \(data .*'data_dir': '.*other'"):
        train(*emma_run(other, tmp_path / "run", max_steps=2, resume_from_checkpoint="latest"))


def test_ctrl_c_is_recorded_and_the_run_resumes(small_abaw, tmp_path):
    loop, emma = emma_run(small_abaw, tmp_path, num_train_epochs=12, save_steps=2)  # 96 steps
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "scripts" / "train.py"), *as_flags(loop, emma)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for(tmp_path / "training_history.json", process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "interrupted; resume with --resume_from_checkpoint latest" in stderr
    history = json.loads((tmp_path / "training_history.json").read_text())
    assert re.fullmatch(r"interrupted at step \d+", history["status"]), history["status"]
    assert history["global_step"] < 96, "interrupted before the end"
    state = train(dataclasses.replace(loop, resume_from_checkpoint="latest"), emma)
    assert state["status"] == "completed" and state["global_step"] == 96


@pytest.mark.parametrize("field", ["learning_rate", "base_learning_rate"])
def test_a_zero_learning_rate_is_refused(field):
    with pytest.raises(ValueError, match=f"--{field} must be positive, got 0"):
        TrainingArguments(**{field: 0.0})


def test_options_that_do_not_fit_the_recipe_are_refused(small_abaw, tmp_path):
    with pytest.raises(ValueError, match="--cnn_path is used only with --mae_path"):
        train(*emma_run(small_abaw, tmp_path, cnn_path=str(tmp_path)))
    (tmp_path / "not_mae").mkdir()
    with pytest.raises(FileNotFoundError, match="not_mae has no config.json"):
        train(*emma_run(small_abaw, tmp_path / "run", mae_path=str(tmp_path / "not_mae")))
