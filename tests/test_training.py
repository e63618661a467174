"""The training loop: parameter groups, arguments, a real run on synthetic data, exact resume, pushing."""

import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from huggingface_hub import CommitInfo, HfApi

from affect_hf.modeling import EmmaForAffectAnalysis
from affect_hf.training import get_recipe, layer_decay_parameter_groups, parse_train_arguments, train
from affect_hf.training.arguments import resolve_mixed_precision
from affect_hf.training.recipes.emma import au_pos_weight_from_labels
from tests.runs import kill_mid_run_and_resume, run_arguments, run_two_processes
from tests.test_modeling import tiny_emma_config


def tiny_run_arguments(data_dir: Path, output_dir: Path, **overrides):
    """(loop arguments, EMMA arguments) of a tiny EMMA run; `overrides` go to whichever dataclass has the field."""
    defaults = dict(
        num_train_epochs=2,
        warmup_epochs=0.5,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=32,
        base_learning_rate=5e-3,
    )
    return run_arguments("emma", output_dir, data_dir=str(data_dir), model_config="tiny", **{**defaults, **overrides})


def test_layer_decay_groups_scale_learning_rates_by_depth():
    model = EmmaForAffectAnalysis(tiny_emma_config())
    groups = layer_decay_parameter_groups(model, learning_rate=1.0, weight_decay=0.05, layer_decay=0.5, num_layers=2)
    by_name = {name: group for group in groups for name in group["names"]}
    assert by_name["vit.embeddings.patch_embeddings.projection.weight"]["lr"] == pytest.approx(0.125)
    assert by_name["vit.layers.0.attention.q_proj.weight"]["lr"] == pytest.approx(0.25)
    assert by_name["vit.layers.1.mlp.fc1.weight"]["lr"] == pytest.approx(0.5)
    assert by_name["head.0.weight"]["lr"] == pytest.approx(1.0) and by_name["va_head.2.weight"]["lr"] == 1.0
    assert by_name["head.0.weight"]["weight_decay"] == 0.05
    for no_decay in ("head.0.bias", "vit.embeddings.cls_token", "vit.layers.0.layernorm_before.weight"):
        assert by_name[no_decay]["weight_decay"] == 0.0
    assert not any(name.startswith("cnn.") for name in by_name), "the frozen CNN must not be optimised"
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert set(by_name) == trainable


def test_au_pos_weight_counts_only_valid_labels():
    labels = np.array([[1, 0, -1], [0, 0, -1], [0, -1, 1], [-1, -1, 1]])
    assert au_pos_weight_from_labels(labels) == [2.0, 1.0, 1.0]


def test_arguments_from_flags_and_yaml(tmp_path):
    args, emma = parse_train_arguments(
        ["--data_dir", "d", "--model_config", "tiny", "--max_steps", "7", "--layer_decay", "0.5"]
    )
    assert (emma.data_dir, emma.model_config, args.max_steps, emma.layer_decay) == ("d", "tiny", 7, 0.5)
    assert args.recipe == "emma" and args.output_dir == "outputs/emma" and emma.drop_path_rate == 0.1
    # Recipe defaults are filled in when the recipe is built, so they can depend on the recipe's own options.
    assert args.base_learning_rate is None
    resolved = get_recipe("emma")(args, emma).args
    assert resolved.base_learning_rate == 5e-4 and resolved.num_train_epochs == 30 and resolved.max_grad_norm == 1.0
    config_file = tmp_path / "run.yaml"
    config_file.write_text("data_dir: d\nmin_learning_rate: 2.0e-6\nmixed_precision: fp16\n")
    args, emma = parse_train_arguments([str(config_file)])
    assert args.min_learning_rate == 2e-6 and isinstance(args.min_learning_rate, float)
    assert args.mixed_precision == "fp16" and emma.data_dir == "d"
    with pytest.raises(ValueError, match="hub_model_id"):
        parse_train_arguments(["--data_dir", "d", "--push_to_hub"])
    with pytest.raises(SystemExit):
        parse_train_arguments(["--data_dir", "d", "--mixed_precision", "fp8"])


def test_training_run_keeps_best_model_and_pushes(synthetic_abaw_root, tmp_path):
    args = tiny_run_arguments(
        synthetic_abaw_root,
        tmp_path / "run",
        eval_on_start=True,
        save_total_limit=1,
        mixed_precision="bf16",
        push_to_hub=True,
        hub_model_id="user/emma-tiny",
        report_to="tensorboard",
    )
    commit = CommitInfo(
        commit_url="https://huggingface.co/user/emma-tiny/commit/1", commit_message="m", commit_description="", oid="1"
    )
    with (
        mock.patch.object(HfApi, "create_repo"),
        mock.patch.object(HfApi, "create_commit", return_value=commit) as push,
    ):
        state = train(*args)

    history = state["history"]
    assert [entry["epoch"] for entry in history] == [-1, 0, 1]
    assert history[-1]["learning_rate"] == pytest.approx(1e-6, rel=1e-3), "cosine ends at min lr"
    assert state["global_step"] == 2 * (96 // 8) and state["status"] == "completed"
    best = max(history[1:], key=lambda entry: entry["P_MTL"])
    assert state["best_scores"]["P_MTL"] == best["P_MTL"]
    for name in ("P_VA", "P_EXPR", "P_AU", "P_MTL", "P_MTL_fitted_thresholds"):
        assert np.isfinite(best[name])
    assert json.loads((tmp_path / "run" / "training_history.json").read_text()) == json.loads(json.dumps(state))

    best_dir = tmp_path / "run" / "best_model"
    config = json.loads((best_dir / "config.json").read_text())
    expected_pos_weight = au_pos_weight_from_labels(
        np.array(
            [
                [int(v) for v in line.split(",")[4:]]
                for line in (synthetic_abaw_root / "training_set_annotations.txt").read_text().splitlines()[1:]
                if line
            ]
        )
    )
    assert config["au_pos_weight"] == pytest.approx(expected_pos_weight)
    assert f"| P_MTL | {best['P_MTL']:.4f} |" in (best_dir / "README.md").read_text()
    assert len(list((tmp_path / "run" / "checkpoints").iterdir())) == 1, "save_total_limit=1"
    assert list((tmp_path / "run" / "emma").rglob("events.out.tfevents.*")), "no TensorBoard log written"
    uploaded = {operation.path_in_repo for operation in push.call_args.kwargs["operations"]}
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} <= uploaded
    assert push.call_args.kwargs["repo_id"] == "user/emma-tiny"


@pytest.mark.parametrize("num_workers", [0, 2])
def test_killed_run_resumed_from_latest_reaches_the_same_weights(synthetic_abaw_root, tmp_path, num_workers):
    """Kill -9 mid-epoch, resume with `latest`: the final weights equal an uninterrupted run's, bit for bit.

    Drop path is on, so this also checks that the random stream resumes where it stopped.
    """
    args = tiny_run_arguments(
        synthetic_abaw_root,
        tmp_path / "unused",
        per_device_train_batch_size=4,
        max_steps=30,
        save_steps=5,
        save_total_limit=2,
        drop_path_rate=0.2,
        num_workers=num_workers,
        warmup_epochs=0.25,
    )
    killed = kill_mid_run_and_resume(*args, state_step=5, tmp_path=tmp_path)
    assert killed["epoch"] == 0 and 0 < killed["batches_in_epoch"] < 96 // 4, "not killed mid-epoch"


def test_resume_without_a_state_is_a_clear_error(synthetic_abaw_root, tmp_path):
    args = tiny_run_arguments(synthetic_abaw_root, tmp_path / "empty", resume_from_checkpoint="latest")
    with pytest.raises(FileNotFoundError, match="no training state to resume"):
        train(*args)


@pytest.mark.parametrize(
    ("cuda", "avx512_bf16", "amx", "expected"),
    [(False, False, False, "no"), (False, True, False, "bf16"), (False, False, True, "bf16")],
)
def test_auto_mixed_precision_uses_bf16_only_where_the_cpu_computes_it(monkeypatch, cuda, avx512_bf16, amx, expected):
    """Emulated bf16 is about 3x slower than fp32 on CPUs without AVX512-BF16 / AMX (measured on this machine)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert resolve_mixed_precision("auto") == expected
    assert resolve_mixed_precision("fp16") == "fp16" and resolve_mixed_precision("no") == "no"


def test_accumulation_counts_optimizer_steps_and_fitted_thresholds_are_stored(synthetic_abaw_root, tmp_path):
    args = tiny_run_arguments(
        synthetic_abaw_root,
        tmp_path / "accumulate",
        gradient_accumulation_steps=5,
        num_train_epochs=1,
        fit_au_thresholds=True,
    )
    state = train(*args)
    # 12 batches in windows of 5, 5 and a last window of 2 at the epoch's end.
    assert state["global_step"] == 3 and state["run"]["effective_batch_size"] == 40
    best_dir = tmp_path / "accumulate" / "best_model"
    thresholds = json.loads((best_dir / "config.json").read_text())["au_thresholds"]
    assert len(thresholds) == 12 and all(0.05 <= value <= 0.95 for value in thresholds)
    assert thresholds != [0.5] * 12
    assert "fitted on this validation split" in (best_dir / "README.md").read_text()


def test_prediction_covers_the_validation_split_in_order(synthetic_abaw_root):
    """The evaluation layer's predictions, through a loader prepared by Accelerate (as training calls it) and a plain
    one (as `affect-hf evaluate` does), equal the model's outputs on the whole split, in order."""
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from affect_hf.data import AbawMtlTorchDataset, load_abaw_mtl
    from affect_hf.evaluation import collect_predictions

    split = load_abaw_mtl(synthetic_abaw_root, "validation")
    dataset = AbawMtlTorchDataset(split, image_size=32, train=False)
    model = EmmaForAffectAnalysis(tiny_emma_config())
    accelerator = Accelerator(cpu=True)
    loader = accelerator.prepare(DataLoader(dataset, batch_size=5, shuffle=False))
    predictions, references = collect_predictions(model, loader, accelerator.gather_for_metrics)
    assert len(predictions["valence_arousal"]) == len(split) == 48
    np.testing.assert_array_equal(references["expression"], np.asarray(split["expression"]))
    np.testing.assert_array_equal(references["action_units"], np.asarray(split["action_units"]))
    np.testing.assert_array_equal(references["valence_arousal"], np.stack([split["valence"], split["arousal"]], 1))
    with torch.no_grad():
        direct = model(torch.stack([dataset[index]["pixel_values"] for index in range(len(dataset))]))
    np.testing.assert_allclose(predictions["valence_arousal"], direct.valence_arousal.numpy(), atol=1e-5)
    np.testing.assert_allclose(predictions["expression"], direct.logits.softmax(-1).numpy(), atol=1e-5)
    np.testing.assert_allclose(predictions["action_units"], torch.sigmoid(direct.au_logits).numpy(), atol=1e-5)
    plain, plain_references = collect_predictions(model, DataLoader(dataset, batch_size=7))
    for name, values in predictions.items():
        np.testing.assert_allclose(plain[name], values, atol=1e-6)
        np.testing.assert_array_equal(plain_references[name], references[name])


def test_two_process_run_counts_steps_and_ends_the_schedule_at_min_lr(synthetic_abaw_root, tmp_path):
    """Real 2-rank data parallel on CPU (gloo): 88 samples / batch 8 = 11 batches, 5 per rank per epoch."""
    output_dir = tmp_path / "ddp"
    flags = [
        "--data_dir", str(synthetic_abaw_root), "--output_dir", str(output_dir), "--model_config", "tiny",
        "--num_train_epochs", "2", "--warmup_epochs", "0.5", "--per_device_train_batch_size", "8",
        "--max_train_samples", "88", "--base_learning_rate", "5e-3", "--min_learning_rate", "1e-5",
        "--mixed_precision", "no", "--num_workers", "0", "--report_to", "none",
    ]  # fmt: skip
    result = run_two_processes(flags)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((output_dir / "training_history.json").read_text())
    assert state["global_step"] == 2 * (11 // 2) and state["run"]["effective_batch_size"] == 16
    peak = 5e-3 * 8 * 2 / 256
    assert 1e-5 < state["history"][0]["learning_rate"] < peak
    assert state["history"][-1]["learning_rate"] == pytest.approx(1e-5, rel=1e-3)
    assert state["history"][-1]["num_samples_expression"] == state["history"][0]["num_samples_expression"]
    assert (output_dir / "best_model" / "model.safetensors").is_file()


def test_a_run_whose_scores_are_all_nan_saves_no_model_and_fails(tmp_path):
    from affect_hf.data import make_synthetic_abaw
    from affect_hf.training import NoModelSavedError

    data_dir = make_synthetic_abaw(
        tmp_path / "unlabelled", num_train=32, num_validation=16, num_test=4, image_size=32, missing_label_rate=1.0
    )
    with pytest.warns(UserWarning), pytest.raises(NoModelSavedError, match="no model was saved"):
        train(*tiny_run_arguments(data_dir, tmp_path / "run", num_train_epochs=1))
    history = json.loads((tmp_path / "run" / "training_history.json").read_text())
    assert history["status"].startswith("failed: no model was saved") and np.isnan(history["history"][0]["P_MTL"])
    assert not (tmp_path / "run" / "best_model").exists()


def test_trainer_state_round_trips_and_an_unknown_recipe_is_named(tmp_path):
    from affect_hf.training import TrainerState, TrainingArguments

    state = TrainerState(global_step=3, epoch=1, history=[{"step": 3, "P_MTL": 0.5}], run={"seed": 0})
    assert TrainerState.from_dict({**state.to_dict(), "written_by_a_later_version": 1}) == state
    assert list(state.to_dict())[:3] == ["global_step", "epoch", "batches_in_epoch"]
    with pytest.raises(ValueError, match="unknown recipe 'vit'; expected one of emma, mae, cotex, dan"):
        train(TrainingArguments(recipe="vit", output_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()
