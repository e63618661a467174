"""Hub-ready folders: contents, card, remote-code loading in a process without this package, pushing."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import CommitInfo, HfApi
from PIL import Image
from transformers import AutoImageProcessor, pipeline

from affect_hf.data import AffectImageTransform
from affect_hf.hub import build_image_processor, push_folder_to_hub, render_model_card, save_model_folder
from affect_hf.model_cards import COTEX_TEMPLATE
from affect_hf.modeling import CotexConfig, CotexForImageClassification, EmmaForAffectAnalysis
from affect_hf.modeling.pipeline_affect import affect_scores, describe
from tests.runs import BLOCK_PROJECT_IMPORTS
from tests.test_modeling import IMAGE_SIZE, TINY_VIT, tiny_emma_config


REMOTE_LOADER = BLOCK_PROJECT_IMPORTS + textwrap.dedent(
    """
    import numpy as np
    import torch
    from transformers import AutoModel, AutoModelForImageClassification, pipeline

    folder, inputs_path, image_path, output_path = sys.argv[1:5]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    classifier_model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)
    assert type(classifier_model) is type(model), (type(classifier_model), type(model))
    with torch.no_grad():
        outputs = model(torch.load(inputs_path))
    classifier = pipeline("image-classification", model=folder, trust_remote_code=True)
    saved = {name: value for name, value in outputs.items() if name in ("logits", "valence_arousal", "au_logits")}
    saved["pipeline"] = classifier(image_path, top_k=8)
    if "custom_pipelines" in model.config.to_dict():  # EMMA's affect-analysis pipeline, built from the folder alone
        analysis = pipeline(model=folder, trust_remote_code=True)
        saved["affect_pipeline"] = analysis([image_path, image_path], batch_size=2)
        from PIL import Image

        saved["affect_pipeline_array"] = analysis(np.asarray(Image.open(image_path).convert("RGB")))
        saved["affect_pipeline_class"] = type(analysis).__module__
    torch.save(saved, output_path)
    """
)


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory) -> tuple[EmmaForAffectAnalysis, Path]:
    torch.manual_seed(0)
    model = EmmaForAffectAnalysis(tiny_emma_config()).eval()
    card = render_model_card(model, scores={"P_MTL": 1.25, "P_VA": 0.4, "f1_AU1": 0.3}, training_arguments={"seed": 0})
    folder = save_model_folder(model, tmp_path_factory.mktemp("hub") / "emma", card)
    return model, folder


@pytest.fixture(scope="module")
def saved_cotex_folder(tmp_path_factory) -> tuple[CotexForImageClassification, Path]:
    torch.manual_seed(0)
    # Heads at a visible scale, so that the remote and local outputs are compared on real numbers.
    model = CotexForImageClassification(CotexConfig(vit_config=dict(TINY_VIT), head_initializer_range=0.5)).eval()
    folder = save_model_folder(
        model, tmp_path_factory.mktemp("hub") / "cotex", render_model_card(model, COTEX_TEMPLATE)
    )
    return model, folder


def test_folder_holds_weights_code_processor_and_card(saved_folder):
    model, folder = saved_folder
    names = {path.name for path in folder.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= names
    assert {"modeling_emma.py", "configuration_emma.py", "modeling_vit_backbone.py", "modeling_dan.py"} <= names
    assert "pipeline_affect.py" in names
    assert not [name for name in os.listdir(folder.parent) if name.startswith(".")], "staging folder left behind"
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert processor["image_std"] == pytest.approx([0.229, 0.224, 0.225])
    assert processor["size"] == {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForImageClassification"}

    card = (folder / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    metrics = {m["type"]: m["value"] for m in metadata["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"P_MTL": 1.25, "P_VA": 0.4}
    assert metadata["pipeline_tag"] == "image-classification"
    assert "| f1_AU1 | 0.3000 |" in card and '"seed": 0' in card


def test_saving_again_replaces_the_folder_whole(saved_folder, tmp_path):
    model, _ = saved_folder
    target = tmp_path / "model"
    save_model_folder(model, target)
    (target / "stale.txt").write_text("from an older save")
    save_model_folder(model, target)
    assert not (target / "stale.txt").exists() and (target / "model.safetensors").is_file()


@pytest.mark.parametrize("fixture", ["saved_folder", "saved_cotex_folder"])
def test_fresh_process_without_the_package_loads_folder_and_pipeline(fixture, request, tmp_path):
    model, folder = request.getfixturevalue(fixture)
    pixel_values = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    torch.save(pixel_values, tmp_path / "inputs.pt")
    image_path = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(image_path)
    (tmp_path / "load.py").write_text(REMOTE_LOADER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, "load.py", str(folder), "inputs.pt", str(image_path), "outputs.pt"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.load(tmp_path / "outputs.pt")
    with torch.no_grad():
        local = model(pixel_values)
    compared = [name for name in ("logits", "valence_arousal", "au_logits") if getattr(local, name, None) is not None]
    affect = (
        ["affect_pipeline", "affect_pipeline_class", "affect_pipeline_array"]
        if isinstance(model, EmmaForAffectAnalysis)
        else []
    )
    assert set(remote) == {*compared, "pipeline", *affect}
    for name in compared:
        assert torch.equal(remote[name], getattr(local, name)), name
    local_pipeline = pipeline("image-classification", model=str(folder))(str(image_path), top_k=8)
    assert remote["pipeline"] == local_pipeline
    assert {entry["label"] for entry in local_pipeline} == set(model.config.id2label.values())
    if affect:
        assert remote["affect_pipeline_class"].startswith("transformers_modules")
        processor = AutoImageProcessor.from_pretrained(folder)
        with torch.no_grad():
            outputs = model(**processor(images=Image.open(image_path), return_tensors="pt"))
        expected = describe(affect_scores(outputs, model.config), 0, model.config)
        for result in [*remote["affect_pipeline"], remote["affect_pipeline_array"]]:  # batched there: float tolerance
            assert result["expression"] == expected["expression"] and result["au_active"] == expected["au_active"]
            assert [result["valence"], result["arousal"]] == pytest.approx([expected["valence"], expected["arousal"]])
            for field in ("expression_scores", "au_probabilities"):
                assert result[field] == pytest.approx(expected[field], abs=1e-6)
        assert set(expected) == {"valence", "arousal", "expression", "expression_scores", "au_probabilities",
                                 "au_active"}  # fmt: skip
        assert list(expected["au_active"]) == list(model.config.au_names)


def test_saved_processor_preprocesses_like_the_training_eval_transform(saved_folder):
    """The pipeline sees what evaluation saw during training: same resize, same normalisation."""
    model, folder = saved_folder
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 60, 3), dtype=np.uint8))
    eval_pixels = AffectImageTransform(image_size=IMAGE_SIZE, train=False)(image)
    processor_pixels = build_image_processor(IMAGE_SIZE)(image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(processor_pixels, eval_pixels, rtol=0, atol=1e-5)

    predictions = pipeline("image-classification", model=str(folder))(image, top_k=8)
    with torch.no_grad():
        probabilities = model(eval_pixels[None]).logits.softmax(-1)[0]
    by_label = {entry["label"]: entry["score"] for entry in predictions}
    for index, label in model.config.id2label.items():
        assert by_label[label] == pytest.approx(probabilities[int(index)].item(), abs=1e-5)


def test_push_uploads_the_whole_folder(saved_folder):
    _, folder = saved_folder
    commit = CommitInfo(
        commit_url="https://huggingface.co/user/emma-test/commit/1", commit_message="m", commit_description="", oid="1"
    )
    with (
        mock.patch.object(HfApi, "create_repo") as create_repo,
        mock.patch.object(HfApi, "create_commit", return_value=commit) as create_commit,
    ):
        url = push_folder_to_hub(folder, "user/emma-test", private=True, commit_message="Upload EMMA")
    assert url == "https://huggingface.co/user/emma-test/commit/1"
    create_repo.assert_called_once()
    assert create_repo.call_args.args[0] == "user/emma-test" and create_repo.call_args.kwargs["private"] is True
    kwargs = create_commit.call_args.kwargs
    assert kwargs["repo_id"] == "user/emma-test" and kwargs["commit_message"] == "Upload EMMA"
    uploaded = {operation.path_in_repo for operation in kwargs["operations"]}
    assert uploaded == {path.name for path in folder.iterdir()}
