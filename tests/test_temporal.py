"""The temporal affect model: what each frame sees (causal or the whole window, never a masked frame), frames placed
by their numbers, the losses' missing-label and gap rules, and its folder loading through AutoModel with remote code
where this package is not installed."""

import subprocess
import sys
import textwrap

import datasets
import numpy as np
import pytest
import torch
from transformers import AutoModel

from affect_hf.modeling import TemporalAffectConfig, TemporalAffectModel
from tests.runs import BLOCK_PROJECT_IMPORTS


FEATURES, SCORES = 16, 28


def tiny_temporal(causal: bool = False, seed: int = 0) -> TemporalAffectModel:
    torch.manual_seed(seed)
    config = TemporalAffectConfig(feature_size=FEATURES, num_scores=SCORES, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, dropout=0.0, causal=causal)  # fmt: skip
    return TemporalAffectModel(config).eval()


def window(batch: int = 2, length: int = 10, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "features": torch.randn(batch, length, FEATURES, generator=generator),
        "scores": torch.randn(batch, length, SCORES, generator=generator),
        "positions": torch.arange(length).expand(batch, -1).clone(),
        "mask": torch.ones(batch, length, dtype=torch.bool),
    }


def answers(model: TemporalAffectModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        outputs = model(**inputs)
    return torch.cat([outputs.valence_arousal, outputs.logits, outputs.au_logits], dim=-1)


def test_outputs_follow_emma_s_contract_per_frame():
    outputs = tiny_temporal()(**window())
    assert outputs.valence_arousal.shape == (2, 10, 2)
    assert outputs.logits.shape == (2, 10, 8) and outputs.au_logits.shape == (2, 10, 12)
    one_frame = answers(tiny_temporal(), window(length=1))  # a face seen once still gets its answer
    assert one_frame.shape == (2, 1, 22) and torch.isfinite(one_frame).all()


@pytest.mark.parametrize("causal", [True, False])
def test_a_causal_model_never_sees_later_frames_and_an_offline_one_does(causal):
    model, inputs = tiny_temporal(causal), window()
    before = answers(model, inputs)
    changed = {**inputs, "features": inputs["features"].clone()}
    changed["features"][:, 7:] += 3.0  # the last three frames change
    after = answers(model, changed)
    if causal:
        torch.testing.assert_close(after[:, :7], before[:, :7])
    else:
        assert (after[:, :7] - before[:, :7]).abs().max() > 1e-3
    assert (after[:, 7:] - before[:, 7:]).abs().max() > 1e-3


def test_masked_frames_are_never_seen_and_frames_are_placed_by_their_numbers():
    model, inputs = tiny_temporal(), window()
    gap = {**inputs, "mask": inputs["mask"].clone(), "features": inputs["features"].clone()}
    gap["mask"][:, 3:5] = False  # the face is hidden for two frames: whatever those rows hold is not read
    gap["features"][:, 3:5] = float("nan")
    with_gap = answers(model, gap)
    assert torch.isfinite(with_gap).all()
    kept = [0, 1, 2, 5, 6, 7, 8, 9]
    # The same frames without the hidden ones, at their own numbers: the same answers.
    alone = {name: value[:, kept] for name, value in inputs.items()}
    torch.testing.assert_close(answers(model, alone), with_gap[:, kept])
    # Closed up (numbered 0 .. 7, as if no time had passed): other answers. Shifted as a whole: the same.
    closed = {**alone, "positions": torch.arange(8).expand(2, -1)}
    assert (answers(model, closed) - with_gap[:, kept]).abs().max() > 1e-4
    shifted = {**alone, "positions": alone["positions"] + 100_000}
    torch.testing.assert_close(answers(model, shifted), with_gap[:, kept])


def test_the_loss_reads_valid_labelled_frames_only():
    model, inputs = tiny_temporal(), window()
    generator = torch.Generator().manual_seed(2)
    labels = {
        "valence_arousal": torch.rand(2, 10, 2, generator=generator) * 2 - 1,
        "expression": torch.randint(0, 8, (2, 10), generator=generator),
        "action_units": torch.randint(0, 2, (2, 10, 12), generator=generator),
    }
    inputs["mask"][:, 8:] = False
    loss = model(**inputs, **labels).loss
    assert torch.isfinite(loss) and loss > 0
    # Labels of a masked frame, or marked missing, change nothing.
    other = {name: value.clone() for name, value in labels.items()}
    other["valence_arousal"][:, 8:] = 0.9
    other["expression"][:, 8:] = 3
    other["action_units"][:, 8:] = 1
    torch.testing.assert_close(model(**inputs, **other).loss, loss)
    missing = {name: value.clone() for name, value in labels.items()}
    missing["expression"][:, 0], missing["valence_arousal"][:, 1] = -1, -5.0
    changed = {name: value.clone() for name, value in missing.items()}
    changed["expression"][:, 0], changed["valence_arousal"][:, 1] = 5, 0.3
    assert not torch.allclose(model(**inputs, **changed).loss, model(**inputs, **missing).loss)
    expression_only = model(**inputs, expression=torch.full((2, 10), -1)).loss
    assert expression_only == 0 and expression_only.requires_grad  # nothing labelled: 0, still in the graph


def test_a_head_width_rotary_positions_cannot_turn_is_refused():
    with pytest.raises(ValueError, match="heads of an even width"):
        TemporalAffectConfig(hidden_size=30, num_attention_heads=2)


REMOTE_LOADER = BLOCK_PROJECT_IMPORTS + textwrap.dedent(
    """
    import torch
    from transformers import AutoModel

    folder, inputs_path, output_path = sys.argv[1:4]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    with torch.no_grad():
        outputs = model(**torch.load(inputs_path))
    torch.save({name: outputs[name] for name in ("valence_arousal", "logits", "au_logits")}, output_path)
    """
)


def test_the_folder_loads_with_auto_model_and_with_remote_code_without_this_package(tmp_path):
    model, inputs = tiny_temporal(causal=True), window()
    model.config.frame_model, model.config.frame_model_sha256 = "runs/emma/best_model", "0" * 64
    model.save_pretrained(tmp_path / "temporal")
    names = {path.name for path in (tmp_path / "temporal").iterdir()}
    assert {"modeling_temporal.py", "configuration_temporal.py", "losses.py", "model.safetensors"} <= names
    loaded = AutoModel.from_pretrained(tmp_path / "temporal").eval()
    assert type(loaded) is TemporalAffectModel and loaded.config.causal
    assert loaded.config.frame_model_sha256 == "0" * 64
    torch.testing.assert_close(answers(loaded, inputs), answers(model, inputs))
    torch.save(inputs, tmp_path / "inputs.pt")
    (tmp_path / "load.py").write_text(REMOTE_LOADER)
    result = subprocess.run([sys.executable, str(tmp_path / "load.py"), str(tmp_path / "temporal"),
                             str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")], capture_output=True, text=True,
                            cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        local = model(**inputs)
    for name in ("valence_arousal", "logits", "au_logits"):
        torch.testing.assert_close(remote[name], local[name])


def frames_table(videos: dict[str, list[int]]) -> datasets.Dataset:
    return datasets.Dataset.from_dict({
        "video": [video for video, numbers in videos.items() for _ in numbers],
        "frame": [number for numbers in videos.values() for number in numbers],
    })  # fmt: skip


def test_windows_span_frame_numbers_so_a_gap_is_a_gap_and_each_video_ends_in_one():
    from affect_hf.data.frame_features import Window, track_windows

    # Video a: frames 1-10 without 4 and 5 (the face was hidden); video b: three frames.
    table = frames_table({"a": [1, 2, 3, 6, 7, 8, 9, 10], "b": [1, 2, 3]})
    windows = track_windows(table, span=4, stride=3)
    assert windows == [
        Window("a", 0, 3),  # frames 1-4: 1, 2, 3 (4 is missing: the window is shorter, not padded)
        Window("a", 3, 5),  # frames 4-7: 6, 7
        Window("a", 4, 8),  # frames 7-10: the last reaches the video's end
        Window("b", 8, 11),  # shorter than a window: one window
    ]
    covered = {row for window in windows for row in range(window.start, window.stop)}
    assert covered == set(range(len(table)))  # every frame is in some window
    with pytest.raises(ValueError, match="1 <= stride <= span"):
        track_windows(table, span=4, stride=5)
    # For evaluation: side by side, the last cut short, every frame in exactly one window, in order.
    once = track_windows(table, span=4, stride=4, each_frame_once=True)
    assert once == [Window("a", 0, 3), Window("a", 3, 6), Window("a", 6, 8), Window("b", 8, 11)]


def test_frame_features_are_extracted_once_and_read_back(tmp_path):
    """The frozen EMMA's pooled feature and VA-head scores per frame of a track, through `datasets.map`, cached as
    Arrow: the second run reads the file (here with the images gone, so it cannot have recomputed them)."""
    import shutil

    from affect_hf.data import load_abaw_track, make_synthetic_abaw
    from affect_hf.data.frame_features import extract_frame_features
    from tests.test_modeling import tiny_emma_with_visible_heads

    root = make_synthetic_abaw(tmp_path / "abaw", num_train=24, num_validation=8, num_test=2, image_size=32,
                               frames_per_video=8, layout="tracks")  # fmt: skip
    split = load_abaw_track(root, "va", "validation")
    model = tiny_emma_with_visible_heads().eval()
    cache = tmp_path / "run" / "features"
    frames = extract_frame_features(model, split, cache, "a" * 64, batch_size=3)
    assert frames.num_rows == split.num_rows and {"features", "scores", "video", "frame"} <= set(frames.column_names)
    from affect_hf.data.datasets import AbawMtlTorchDataset

    first = AbawMtlTorchDataset(split, image_size=model.config.image_size, train=False)[0]["pixel_values"]
    with torch.no_grad():
        outputs = model(pixel_values=first[None])
    np.testing.assert_allclose(frames[0]["features"], outputs.pooler_output[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(
        frames[0]["scores"],
        torch.cat([outputs.cnn_logits, outputs.logits, outputs.au_logits], -1)[0].numpy(),
        atol=1e-5,
    )
    shutil.rmtree(root / "cropped_aligned")
    again = extract_frame_features(model, split, cache, "a" * 64, batch_size=3)
    np.testing.assert_array_equal(np.asarray(again["scores"]), np.asarray(frames["scores"]))
    with pytest.raises((FileNotFoundError, OSError)):  # other weights are another extraction: it reads the images
        extract_frame_features(model, split, cache, "b" * 64, batch_size=3)


def test_windows_are_padded_to_their_span_and_the_padding_changes_nothing():
    from torch.utils.data import default_collate

    from affect_hf.data.frame_features import WindowDataset, track_windows

    generator = np.random.default_rng(0)
    numbers = {"a": [1, 2, 3, 6, 7, 8, 9, 10], "b": [1, 2, 3]}
    count = sum(map(len, numbers.values()))
    table = frames_table(numbers)
    table = table.add_column("features", list(generator.normal(size=(count, FEATURES)).astype(np.float32)))
    table = table.add_column("scores", list(generator.normal(size=(count, SCORES)).astype(np.float32)))
    table = table.add_column("valence", generator.uniform(-1, 1, count).astype(np.float32))
    table = table.add_column("arousal", generator.uniform(-1, 1, count).astype(np.float32))
    table = table.add_column("expression", generator.integers(0, 8, count))
    table = table.add_column("action_units", list(generator.integers(0, 2, (count, 12)).astype(np.int8)))
    windows = track_windows(table, span=4, stride=3)
    items = WindowDataset(table, windows, span=4)
    first = items[0]  # frames 1, 2, 3 of video a, then one padded frame
    assert first["features"].shape == (4, FEATURES) and first["mask"].tolist() == [True, True, True, False]
    assert first["positions"].tolist() == [1, 2, 3, 3] and first["expression"][3] == -1
    assert first["valence_arousal"][3].tolist() == [-5.0, -5.0] and (first["action_units"][3] == -1).all()
    np.testing.assert_allclose(first["features"][:3].numpy(), np.asarray(table["features"][:3]))
    batch = default_collate([items[index] for index in range(len(items))])
    model = tiny_temporal()
    padded = model(**batch)
    assert padded.valence_arousal.shape == (len(windows), 4, 2) and torch.isfinite(padded.loss)
    # The same first window unpadded: the same answers on its frames.
    unpadded = {name: value[:1, :3] for name, value in batch.items()}
    torch.testing.assert_close(answers(model, unpadded), answers(model, batch)[:1, :3])


# ---------------------------------------------------------------------------------------------- the temporal recipe


@pytest.fixture(scope="module")
def track_root(tmp_path_factory):
    from affect_hf.data import make_synthetic_abaw

    return make_synthetic_abaw(tmp_path_factory.mktemp("tracks"), num_train=48, num_validation=16, num_test=2,
                               image_size=32, frames_per_video=16, layout="tracks")  # fmt: skip


@pytest.fixture(scope="module")
def frame_emma(tmp_path_factory):
    from affect_hf.hub import save_model_folder
    from tests.test_modeling import tiny_emma_with_visible_heads

    return save_model_folder(tiny_emma_with_visible_heads(), tmp_path_factory.mktemp("frame") / "emma")


def temporal_run(root, emma, output_dir, **overrides):
    from tests.runs import run_arguments

    fields = dict(data_dir=str(root), frame_model=str(emma), task="va", window_seconds=0.2, fps=30.0,
                  window_overlap=0.5, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                  per_device_train_batch_size=4, num_train_epochs=2, feature_batch_size=16)  # fmt: skip
    return run_arguments("temporal", output_dir, **{**fields, **overrides})


@pytest.fixture(scope="module")
def trained_temporal(track_root, frame_emma, tmp_path_factory):
    from affect_hf.training import train

    output = tmp_path_factory.mktemp("temporal_run") / "temporal"
    training_args, recipe_args = temporal_run(track_root, frame_emma, output)
    train(training_args, recipe_args)
    return output, training_args, recipe_args


def test_the_temporal_recipe_trains_on_cached_features_and_scores_every_frame_once(trained_temporal, track_root,
                                                                                   frame_emma):  # fmt: skip
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from affect_hf.evaluation import collect_predictions, load_split, window_forward
    from affect_hf.models import weights_sha256
    from affect_hf.training import get_recipe

    output, training_args, recipe_args = trained_temporal
    assert len(list((output / "frame_features").glob("frame_features-*.arrow"))) == 2  # train and validation
    best = AutoModel.from_pretrained(output / "best_model")
    assert type(best) is TemporalAffectModel and best.config.window_frames == 6
    assert best.config.frame_model == str(frame_emma)
    assert best.config.frame_model_sha256 == weights_sha256(frame_emma)
    assert (output / "best_model" / "README.md").is_file()
    assert not (output / "best_model" / "preprocessor_config.json").exists()  # it reads features, not pictures
    # Evaluation reads every validation frame once, in order: its references are the split's labels as they are.
    recipe = get_recipe("temporal")(training_args, recipe_args)
    data = recipe.build_data(best, Accelerator(cpu=True))
    predictions, references = collect_predictions(best, DataLoader(data.evaluation, batch_size=3),
                                                  forward=window_forward)  # fmt: skip
    split = load_split(track_root, "va", "validation")
    np.testing.assert_array_equal(references["valence_arousal"][:, 0], np.asarray(split["valence"]))
    assert predictions["valence_arousal"].shape == (split.num_rows, 2)


def test_evaluate_scores_the_frame_model_and_the_temporal_one_side_by_side(trained_temporal, track_root, frame_emma,
                                                                           tmp_path, capsys):  # fmt: skip
    import json

    from affect_hf.cli import main
    from affect_hf.hub import save_model_folder
    from tests.test_modeling import TINY_VIT, tiny_emma_with_visible_heads

    best = trained_temporal[0] / "best_model"
    main(["evaluate", "--model", str(frame_emma), "--model", str(best), "--data_dir", str(track_root), "--track",
          "va", "--output_dir", str(tmp_path / "report"), "--device", "cpu"])  # fmt: skip
    results = json.loads((tmp_path / "report" / "scores.json").read_text())
    frame, temporal = results["models"]["model_1"], results["models"]["model_2"]
    # The same validation frames (those with a valid label), scored once each by both.
    assert frame["scores"]["num_samples_valence_arousal"] == temporal["scores"]["num_samples_valence_arousal"] > 12
    assert temporal["scores"]["P_VA"] != frame["scores"]["P_VA"]
    # Its frame model with other weights: refused with --strict (warned about without); another width: refused.
    config = json.loads((best / "config.json").read_text())
    retrained = save_model_folder(tiny_emma_with_visible_heads(seed=1), tmp_path / "other_emma")
    config["frame_model"] = str(retrained)
    moved = tmp_path / "moved"
    import shutil

    shutil.copytree(best, moved)
    (moved / "config.json").write_text(json.dumps(config))
    arguments = ["evaluate", "--model", str(moved), "--data_dir", str(track_root), "--track", "va", "--output_dir",
                 str(tmp_path / "strict"), "--device", "cpu"]  # fmt: skip
    with pytest.raises(SystemExit):
        main([*arguments, "--strict"])
    assert "has other weights" in capsys.readouterr().err
    main(arguments)  # without --strict: scored, with a warning
    wider = save_model_folder(tiny_emma_with_visible_heads(vit_config={**TINY_VIT, "hidden_size": 48}),
                              tmp_path / "wider_emma")  # fmt: skip
    config["frame_model"] = str(wider)
    (moved / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit):
        main(arguments)
    assert "reads 32-wide features" in capsys.readouterr().err


def test_a_killed_temporal_run_resumes_to_the_same_weights(track_root, frame_emma, tmp_path):
    from tests.runs import kill_mid_run_and_resume

    args = temporal_run(track_root, frame_emma, tmp_path / "unused", max_steps=12, save_steps=4, save_total_limit=2,
                        num_train_epochs=4)  # fmt: skip
    killed = kill_mid_run_and_resume(*args, state_step=4, tmp_path=tmp_path)
    assert killed["global_step"] >= 4


@pytest.mark.parametrize("task", ["va", "expr"])
def test_on_tracks_with_time_in_them_the_gain_comes_from_time(task, tmp_path):
    """The done-when of the temporal recipe, on the synthetic VA and EXPR tracks (smooth labels shown through
    noise): over a frozen tiny EMMA, 16-frame windows raise the track's score (P_VA, P_EXPR) well past the EMMA
    alone, and past the same temporal model with one-frame windows (a second head on the same features): the gain
    comes from time."""
    from affect_hf.data import make_synthetic_abaw
    from affect_hf.training import train
    from tests.runs import run_arguments

    root = make_synthetic_abaw(tmp_path / "tracks", num_train=1536, num_validation=384, num_test=2, image_size=32,
                               frames_per_video=64, layout="tracks")  # fmt: skip
    emma = train(*run_arguments("emma", tmp_path / "emma", data_dir=str(root), task=task, model_config="tiny",
                                num_train_epochs=6, per_device_train_batch_size=32, warmup_epochs=1.0))  # fmt: skip
    scores = {}
    for frames, epochs, overlap in ((1, 5, 0.0), (16, 40, 0.75)):
        state = train(*run_arguments(
            "temporal", tmp_path / f"temporal_{frames}", data_dir=str(root), frame_model=str(tmp_path / "emma" /
            "best_model"), task=task, window_seconds=frames / 30, fps=30.0, window_overlap=overlap, hidden_size=64,
            num_hidden_layers=2, num_attention_heads=4, num_train_epochs=epochs, per_device_train_batch_size=16,
        ))  # fmt: skip
        scores[frames] = state["best_score"]
    # Scored as users score them, side by side: the same numbers as the loops' own evaluations.
    import json

    from affect_hf.cli import main
    from affect_hf.evaluation import TRACK_SELECTION

    main(["evaluate", "--model", str(tmp_path / "emma" / "best_model"), "--model",
          str(tmp_path / "temporal_16" / "best_model"), "--data_dir", str(root), "--track", task, "--output_dir",
          str(tmp_path / "report"), "--device", "cpu"])  # fmt: skip
    models = json.loads((tmp_path / "report" / "scores.json").read_text())["models"]
    frame, temporal = (models[name]["scores"][TRACK_SELECTION[task]] for name in ("model_1", "model_2"))
    assert frame == pytest.approx(emma["best_score"], abs=1e-4) and temporal == pytest.approx(scores[16], abs=1e-4)
    assert temporal >= frame + 0.05, (frame, scores)
    # Measured here: VA: EMMA 0.03, one frame 0.47, 16 frames 0.82; EXPR: 0.75, 0.75, 0.90.
    assert scores[16] >= scores[1] + 0.1, scores
