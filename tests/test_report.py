"""`affect-hf evaluate`: scores equal to the metric functions on the synthetic MTL split, the report's figures,
a side-by-side of two models, the uni-task and LSD tracks, and tasks without labels."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from affect_hf.cli import main
from affect_hf.data import AbawMtlTorchDataset, load_abaw_mtl, make_synthetic_abaw
from affect_hf.data.synthetic_faces import make_synthetic_lsd
from affect_hf.hub import save_model_folder
from affect_hf.metrics import abaw_mtl_score
from affect_hf.modeling import CotexConfig, CotexForImageClassification
from affect_hf.report import evaluate_models
from affect_hf.training.presets import COTEX_PRESETS
from tests.test_modeling import tiny_emma_with_visible_heads


@pytest.fixture(scope="module")
def mtl_root(tmp_path_factory):
    return make_synthetic_abaw(
        tmp_path_factory.mktemp("mtl"), num_train=8, num_validation=64, num_test=8, image_size=32
    )


@pytest.fixture(scope="module")
def emma_folders(tmp_path_factory):
    folders = []
    for seed in (0, 1):
        model = tiny_emma_with_visible_heads(seed, au_thresholds=[0.4] * 12)
        folders.append((model, save_model_folder(model, tmp_path_factory.mktemp("emma") / f"emma{seed}")))
    return folders


def test_mtl_scores_equal_the_metric_and_the_report_has_its_figures(mtl_root, emma_folders, tmp_path):
    model, folder = emma_folders[0]
    results = evaluate_models([folder], mtl_root, "mtl", tmp_path, device="cpu")
    split = load_abaw_mtl(mtl_root, "validation")
    dataset = AbawMtlTorchDataset(split, image_size=model.config.image_size, train=False)
    with torch.no_grad():
        outputs = model(torch.stack([dataset[i]["pixel_values"] for i in range(len(dataset))]))
    references = {
        "valence_arousal": np.stack([split["valence"], split["arousal"]], 1),
        "expression": np.asarray(split["expression"]),
        "action_units": np.asarray(split["action_units"]),
    }
    predictions = {"valence_arousal": outputs.valence_arousal.numpy(), "expression": outputs.logits.numpy(),
                   "action_units": torch.sigmoid(outputs.au_logits).numpy()}  # fmt: skip
    expected = abaw_mtl_score(predictions, references, au_thresholds=[0.4] * 12)
    saved = json.loads((tmp_path / "scores.json").read_text())
    assert saved == json.loads(json.dumps(results, default=float))
    scores = saved["models"]["model"]["scores"]
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value, abs=1e-5), name
    assert scores["P_AU_fitted_thresholds"] >= scores["P_AU"] - 1e-9  # thresholds fitted on this very split
    assert saved["models"]["model"]["au_thresholds"]["AU12"] == 0.4 and saved["models"]["model"]["unavailable"] == {}
    figures = {"model_confusion.png", "model_expression_scores.png", "model_au_f1.png", "model_au_scores.png",
               "model_valence_arousal.png"}  # fmt: skip
    assert figures <= {path.name for path in tmp_path.iterdir()}
    for name in figures:
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.width > 400
    page = (tmp_path / "report.html").read_text()
    assert all(f'src="{name}"' in page for name in figures) and "P_MTL" in page


def test_two_models_side_by_side(mtl_root, emma_folders, tmp_path, capsys):
    main(["evaluate", "--model", str(emma_folders[0][1]), "--model", str(emma_folders[1][1]), "--data_dir",
          str(mtl_root), "--track", "mtl", "--output_dir", str(tmp_path), "--device", "cpu"])  # fmt: skip
    saved = json.loads((tmp_path / "scores.json").read_text())
    assert list(saved["models"]) == ["model_1", "model_2"]
    assert saved["models"]["model_1"]["scores"]["P_MTL"] != saved["models"]["model_2"]["scores"]["P_MTL"]
    page = (tmp_path / "report.html").read_text()
    assert page.count("<img") == 10 and 'src="model_2_confusion.png"' in page
    assert "model_1 (" in capsys.readouterr().out


def test_a_task_without_labels_is_reported_unavailable(mtl_root, emma_folders, tmp_path):
    annotations = mtl_root.parent / "no_au"
    annotations.mkdir()
    for path in mtl_root.iterdir():
        (annotations / path.name).symlink_to(path, target_is_directory=path.is_dir())
    (annotations / "validation_set_annotations.txt").unlink()
    lines = (mtl_root / "validation_set_annotations.txt").read_text().splitlines()
    rewritten = [lines[0]] + [",".join(line.split(",")[:4] + ["-1"] * 12) for line in lines[1:]]
    (annotations / "validation_set_annotations.txt").write_text("\n".join(rewritten) + "\n")
    results = evaluate_models([emma_folders[0][1]], annotations, "mtl", tmp_path, device="cpu")
    entry = results["models"]["model"]
    assert entry["unavailable"] == {"au": "no valid action units label in this split"}
    assert not (tmp_path / "model_au_f1.png").exists() and (tmp_path / "model_confusion.png").exists()
    assert "au unavailable" in (tmp_path / "report.html").read_text()


def test_uni_task_and_lsd_tracks(emma_folders, tmp_path):
    tracks = make_synthetic_abaw(tmp_path / "tracks", num_train=8, num_validation=32, num_test=8, image_size=32,
                                 layout="tracks")  # fmt: skip
    va = evaluate_models([emma_folders[0][1]], tracks, "va", tmp_path / "va", device="cpu")["models"]["model"]
    assert set(va["scores"]) == {"P_VA", "ccc_valence", "ccc_arousal", "num_samples_valence_arousal"}
    assert (tmp_path / "va" / "model_valence_arousal.png").exists()
    assert not (tmp_path / "va" / "model_confusion.png").exists()
    lsd = make_synthetic_lsd(tmp_path / "lsd", num_train_per_class=1, num_validation_per_class=3, image_size=32)
    cotex = CotexForImageClassification(CotexConfig(**COTEX_PRESETS["tiny"])).eval()
    folder = save_model_folder(cotex, tmp_path / "cotex")
    scores = evaluate_models([folder], lsd, "lsd", tmp_path / "lsd_report", device="cpu")["models"]["model"]["scores"]
    assert scores["num_samples"] == 18 and 0 <= scores["f1_macro"] <= 1
    assert (tmp_path / "lsd_report" / "model_confusion.png").exists()
    with pytest.raises(ValueError, match="needs an EMMA"):
        evaluate_models([folder], tracks, "va", tmp_path / "x", device="cpu")
