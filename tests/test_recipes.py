"""Every recipe of the paper through the one loop: MAE pretraining, masked CoTEX, DAN, and the folders they hand on."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import PIL.Image
import pytest
import torch
from transformers import AutoModel, ViTMAEForPreTraining, pipeline

from affect_hf.data.synthetic import make_synthetic_abaw
from affect_hf.data.synthetic_faces import make_synthetic_affectnet, make_synthetic_faces, make_synthetic_lsd
from affect_hf.labels import LSD_EXPRESSIONS
from affect_hf.modeling import CotexForImageClassification, DanForImageClassification, EmmaForAffectAnalysis
from affect_hf.training import parse_train_arguments, train
from tests.runs import BLOCK_PROJECT_IMPORTS, kill_mid_run_and_resume, run_arguments, run_two_processes


@pytest.fixture(scope="module")
def lsd_root(tmp_path_factory):
    return make_synthetic_lsd(
        tmp_path_factory.mktemp("lsd"), num_train_per_class=24, num_validation_per_class=8, image_size=32
    )


@pytest.fixture(scope="module")
def affectnet_root(tmp_path_factory):
    return make_synthetic_affectnet(
        tmp_path_factory.mktemp("affectnet"), num_train_per_class=24, num_validation_per_class=8, image_size=32
    )


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """224 unlabeled faces of mixed sizes, modes and formats, 4 of them broken."""
    return make_synthetic_faces(tmp_path_factory.mktemp("faces"), num_images=224, num_corrupt=4, max_size=64)


@pytest.fixture(scope="module")
def abaw_root(tmp_path_factory):
    return make_synthetic_abaw(tmp_path_factory.mktemp("abaw"), num_train=32, num_validation=16, image_size=32)


def cotex_run(data_dir, output_dir, **overrides):
    fields = dict(
        data_dir=str(data_dir), model_config="tiny", num_train_epochs=4, warmup_epochs=1.0,
        per_device_train_batch_size=16, gradient_accumulation_steps=1, base_learning_rate=5e-3,
        drop_path_rate=0.0, layer_decay=0.9,
    )  # fmt: skip
    return run_arguments("cotex", output_dir, **{**fields, **overrides})


def dan_run(data_dir, output_dir, **overrides):
    fields = dict(
        data_dir=str(data_dir), model_config="tiny", num_train_epochs=6, per_device_train_batch_size=16,
        base_learning_rate=0.05,
    )  # fmt: skip
    return run_arguments("dan", output_dir, **{**fields, **overrides})


def mae_run(data_dir, output_dir, **overrides):
    fields = dict(
        data_dir=str(data_dir), model_config="tiny", num_validation_images=32, num_train_epochs=12,
        warmup_epochs=1.0, per_device_train_batch_size=16, base_learning_rate=6e-3,
    )  # fmt: skip
    return run_arguments("mae", output_dir, **{**fields, **overrides})


# ------------------------------------------------------------------------------------------------------ CoTEX


def test_cotex_learns_lsd_expressions_far_above_chance_and_saves_a_pipeline_ready_folder(lsd_root, tmp_path):
    state = train(*cotex_run(lsd_root, tmp_path, eval_on_start=True))
    history = state["history"]
    assert history[0]["epoch"] == -1 and len(history) == 5
    assert state["best_scores"]["f1_macro"] > 0.8 > 1 / 6 and state["best_scores"]["accuracy"] > 0.8
    assert set(history[-1]) >= {f"f1_{name}" for name in LSD_EXPRESSIONS}

    folder = tmp_path / "best_model"
    model = AutoModel.from_pretrained(folder)
    assert isinstance(model, CotexForImageClassification) and model.config.mask_ratio == 0.75
    image = next((lsd_root / "validation_set_real_images" / "HAPPINESS").glob("*.jpg"))
    predictions = pipeline("image-classification", model=str(folder))(str(image), top_k=6)
    assert {entry["label"] for entry in predictions} == set(LSD_EXPRESSIONS)
    assert predictions[0]["label"] == "Happiness"
    assert "| f1_macro |" in (folder / "README.md").read_text()


def test_cotex_batch_grows_with_the_mask_ratio():
    from affect_hf.training import get_recipe

    recipe = get_recipe("cotex")
    _, options = parse_train_arguments(["--recipe", "cotex", "--data_dir", "d", "--mask_ratio", "0.9"])
    assert recipe.loop_defaults(options)["per_device_train_batch_size"] == 640
    _, options = parse_train_arguments(["--recipe", "cotex", "--data_dir", "d", "--unmasked_batch_size", "512"])
    assert recipe.loop_defaults(options)["per_device_train_batch_size"] == 2048
    _, options = parse_train_arguments(["--recipe", "cotex", "--data_dir", "d", "--mask_ratio", "0.0"])
    assert recipe.loop_defaults(options)["per_device_train_batch_size"] == 64


# ------------------------------------------------------------------------------------------------------ DAN


def test_dan_learns_above_chance_and_its_folder_plugs_into_emma(affectnet_root, abaw_root, tmp_path):
    state = train(*dan_run(affectnet_root, tmp_path / "dan"))
    assert state["best_scores"]["accuracy"] > 0.4 > 1 / 8
    dan_folder = tmp_path / "dan" / "best_model"
    dan = AutoModel.from_pretrained(dan_folder)
    assert isinstance(dan, DanForImageClassification)

    torch.manual_seed(0)
    mae_folder = tmp_path / "mae"
    ViTMAEForPreTraining(_tiny_mae_config()).save_pretrained(mae_folder)
    emma = run_arguments(
        "emma", tmp_path / "emma", data_dir=str(abaw_root), mae_path=str(mae_folder), cnn_path=str(dan_folder),
        max_steps=2, per_device_train_batch_size=8, num_train_epochs=1, warmup_epochs=0.5, base_learning_rate=1e-3,
    )  # fmt: skip
    assert train(*emma)["status"] == "completed"
    trained = EmmaForAffectAnalysis.from_pretrained(tmp_path / "emma" / "best_model")
    for key, value in dan.state_dict().items():
        assert torch.equal(trained.cnn.state_dict()[key], value), f"the frozen CNN is DAN's: {key}"


def _tiny_mae_config():
    from transformers import ViTMAEConfig

    from affect_hf.training.presets import MAE_PRESETS

    return ViTMAEConfig(**MAE_PRESETS["tiny"])


# ------------------------------------------------------------------------------------------------------ MAE

REMOTE_MAE_LOADER = BLOCK_PROJECT_IMPORTS + textwrap.dedent(
    """
    import torch
    from transformers import ViTMAEForPreTraining

    folder, inputs, output = sys.argv[1:4]
    model = ViTMAEForPreTraining.from_pretrained(folder).eval()
    pixel_values, noise = torch.load(inputs)
    with torch.no_grad():
        torch.save(model(pixel_values=pixel_values, noise=noise).logits, output)
    """
)


def test_mae_pretraining_lowers_the_held_out_loss_and_hands_on_a_stock_folder(faces, lsd_root, abaw_root, tmp_path):
    # 192 training faces in batches of 8 for 10 epochs: 240 steps.
    state = train(
        *mae_run(faces, tmp_path / "mae", eval_on_start=True, per_device_train_batch_size=8, num_train_epochs=10)
    )
    losses = [entry["eval_loss"] for entry in state["history"]]
    assert state["global_step"] == 240 and losses[-1] < 0.75 * losses[0], losses
    broken_in_training = 4 - sum(1 for path in _listed(tmp_path / "mae")[:32] if _is_broken(path))
    assert state["unreadable_images"] == 10 * broken_in_training
    figures = sorted((tmp_path / "mae" / "figures").glob("reconstruction_step*.png"))
    assert len(figures) == len(losses) and PIL.Image.open(figures[-1]).size == (4 * 96, 8 * 96)
    assert json.loads((tmp_path / "mae" / "training_history.json").read_text())["status"] == "completed"

    # Stock transformers, in a process where this package cannot be imported, gives the same reconstruction.
    folder = tmp_path / "mae" / "best_model"
    local = ViTMAEForPreTraining.from_pretrained(folder).eval()
    assert local.config.mask_ratio == 0.75 and local.config.norm_pix_loss
    inputs = (torch.randn(2, 3, 32, 32), torch.rand(2, 16))
    torch.save(inputs, tmp_path / "inputs.pt")
    (tmp_path / "load.py").write_text(REMOTE_MAE_LOADER)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run(
        [sys.executable, "load.py", str(folder), "inputs.pt", "out.pt"], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "out.pt"), local(pixel_values=inputs[0], noise=inputs[1]).logits)
    assert {"preprocessor_config.json", "README.md"} <= {path.name for path in folder.iterdir()}

    # The prior starts an EMMA and a CoTEX run.
    emma = run_arguments(
        "emma", tmp_path / "emma", data_dir=str(abaw_root), mae_path=str(folder), max_steps=2, num_train_epochs=1,
        per_device_train_batch_size=8, warmup_epochs=0.5, base_learning_rate=1e-3,
    )  # fmt: skip
    assert train(*emma)["status"] == "completed"
    cotex = cotex_run(lsd_root, tmp_path / "cotex", mae_path=[str(folder)], max_steps=2)
    assert train(*cotex)["status"] == "completed"


def test_the_held_out_loss_per_image_is_vitmaes_own_loss():
    """The evaluation's per-image loss (exact whatever the batching) averages to the model's batch loss."""
    from affect_hf.training.recipes.mae import per_image_loss

    torch.manual_seed(0)
    model = ViTMAEForPreTraining(_tiny_mae_config()).eval()
    pixel_values, noise = torch.randn(5, 3, 32, 32), torch.rand(5, 16)
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values, noise=noise)
        per_image = per_image_loss(model, pixel_values, outputs)
    assert per_image.shape == (5,) and not torch.allclose(per_image, per_image[0])
    torch.testing.assert_close(per_image.mean(), outputs.loss)


def _listed(output_dir):
    return (output_dir / "train_images.txt").read_text().splitlines()


def _is_broken(path: str) -> bool:
    try:
        with PIL.Image.open(path) as image:
            image.load()
    except OSError:
        return True
    return False


def test_a_run_that_failed_before_training_leaves_a_reusable_folder_and_resumes_check_the_held_out_set(faces, tmp_path):
    with pytest.raises(ValueError, match="smaller than one batch"):
        train(*mae_run(faces, tmp_path, per_device_train_batch_size=4096))
    assert (tmp_path / "train_images.txt").is_file()
    state = train(*mae_run(faces, tmp_path, max_steps=2))  # the listing a failed start left is no run
    assert state["status"] == "completed"
    with pytest.raises(ValueError, match=r"\(data .*'num_validation_images': 32\} -> .*'num_validation_images': 31"):
        train(*mae_run(faces, tmp_path, max_steps=2, num_validation_images=31, resume_from_checkpoint="latest"))


def test_mae_pretraining_streams_tar_shards_against_a_validation_folder(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    shards = make_synthetic_faces(tmp_path / "shards", num_images=128, num_corrupt=2, max_size=48, images_per_shard=32)
    # 128 streamed images (none set aside: a validation folder is given), 16 steps per epoch, 12 epochs.
    broken_validation = make_synthetic_faces(tmp_path / "broken", num_images=8, num_corrupt=1, max_size=48, seed=2)
    args = mae_run(
        shards, tmp_path / "run", validation_dir=str(broken_validation), num_train_epochs=12,
        per_device_train_batch_size=8, base_learning_rate=2e-2, report_to="tensorboard", eval_on_start=True,
    )  # fmt: skip
    with pytest.raises(OSError, match="validation image cannot be read"):
        train(*args)  # a validation folder the user chose is not trimmed in silence: it must be mended

    valid = make_synthetic_faces(tmp_path / "valid", num_images=24, max_size=48, seed=1)
    args[1].validation_dir = str(valid)
    state = train(dataclasses.replace(args[0], overwrite_output_dir=True), args[1])
    assert state["global_step"] == 192 and state["train_images"] + state["unreadable_images"] == 12 * 128
    assert state["unreadable_images"] == 12 * 2
    losses = [entry["eval_loss"] for entry in state["history"]]
    assert losses[-1] < 0.8 * losses[0], losses
    logs = next((tmp_path / "run" / "mae").rglob("events.out.tfevents.*")).parent
    events = EventAccumulator(str(logs), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert len(events.Images("reconstruction")) == len(losses), "each figure is logged to the tracker"
    assert [event.value for event in events.Scalars("eval/eval_loss")] == pytest.approx(losses)


# ------------------------------------------------------------------------------------------------ exact resume


@pytest.mark.parametrize("recipe", ["mae", "cotex", "dan"])
def test_a_killed_run_resumes_to_the_same_weights(recipe, faces, lsd_root, affectnet_root, tmp_path):
    """SIGKILL mid-epoch, resume with `latest`: the final weights equal an uninterrupted run's, bit for bit (MAE's
    stream with two DataLoader workers, CoTEX's masks and drop path, DAN's class-balanced draws)."""
    common = dict(max_steps=12, save_steps=4, save_total_limit=2, per_device_train_batch_size=8, num_train_epochs=2)
    if recipe == "mae":
        args = mae_run(faces, tmp_path / "unused", num_workers=2, **common)
    elif recipe == "cotex":
        args = cotex_run(lsd_root, tmp_path / "unused", drop_path_rate=0.2, **common)
    else:
        args = dan_run(affectnet_root, tmp_path / "unused", **common)
    killed = kill_mid_run_and_resume(*args, state_step=4, tmp_path=tmp_path)
    assert killed["epoch"] == 0 and killed["batches_in_epoch"] == 4, "killed mid-epoch, after the step-4 state"


def test_a_two_process_mae_run_sees_each_image_once_per_epoch(tmp_path):
    """Real 2-rank data parallel on CPU (gloo): 48 faces, 8 held out, 40 streamed as 20 per process per epoch.

    One training image is broken: read exactly once per epoch across the processes, it is counted once per epoch;
    processes that read the same images (or skip some) would count it 0 or 2 times.
    """
    faces = make_synthetic_faces(tmp_path / "faces", num_images=48, max_size=40)
    last = sorted(path for path in faces.rglob("*") if path.is_file())[-1]  # in the training part, not held out
    last.write_bytes(b"broken")
    output_dir = tmp_path / "ddp"
    flags = [
        "--recipe", "mae", "--data_dir", str(faces), "--output_dir", str(output_dir), "--model_config", "tiny",
        "--num_validation_images", "8", "--num_train_epochs", "2", "--warmup_epochs", "0.5",
        "--per_device_train_batch_size", "4", "--mixed_precision", "no", "--num_workers", "0", "--report_to", "none",
    ]  # fmt: skip
    result = run_two_processes(flags)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((output_dir / "training_history.json").read_text())
    assert state["run"]["num_processes"] == 2 and state["global_step"] == 2 * 5
    assert [entry["unreadable_images"] for entry in state["history"]] == [1, 2]
    assert [entry["train_images"] for entry in state["history"]] == [39, 78]
    assert (output_dir / "best_model" / "model.safetensors").is_file()


# ----------------------------------------------------------------------------------------- the command line


@pytest.mark.parametrize(
    ("recipe", "own", "foreign", "default"),
    [("mae", "--mask_ratio", "--cnn_path", "0.00015"), ("cotex", "--js_weight", "--au_pos_weight", "0.000125"),
     ("dan", "--class_balanced", "--mae_path", "0.0001"), ("emma", "--cnn_path", "--js_weight", "0.0005")],
)  # fmt: skip
def test_help_shows_the_recipes_own_options_and_foreign_ones_are_refused(recipe, own, foreign, default, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_train_arguments(["--recipe", recipe, "--help"])
    shown = capsys.readouterr().out
    assert exit_info.value.code == 0 and f"Train with the {recipe} recipe" in shown
    assert own in shown and foreign not in shown
    assert f"(default: {default})" in shown.split("  --base_learning_rate")[1].split("  --")[0]
    with pytest.raises(SystemExit) as exit_info:
        parse_train_arguments(["--recipe", recipe, "--data_dir", "d", foreign, "x"])
    message = capsys.readouterr().err
    assert (
        exit_info.value.code == 2 and f"not an option of the {recipe} recipe: {foreign} (an option of the " in message
    )
