"""ONNX export: parity with torch in ONNX Runtime for EMMA, CoTEX and DAN, int8 agreement, the export record's
checks, and `predict --backend onnx`."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.data import astronaut

import affect_hf
from affect_hf.cli import main
from affect_hf.data import make_synthetic_abaw
from affect_hf.export import export_onnx
from affect_hf.hub import save_model_folder
from affect_hf.modeling import (
    CotexConfig,
    CotexForImageClassification,
    DanConfig,
    DanForImageClassification,
    EmmaForAffectAnalysis,
)
from affect_hf.modeling.modeling_temporal import frame_inputs
from affect_hf.models import INT8_FILE, ONNX_FILE, RECORD_FILE, OnnxAffectModel, OnnxExportError
from affect_hf.training.presets import COTEX_PRESETS
from tests.test_modeling import IMAGE_SIZE, TINY_CNN, tiny_emma_config, tiny_emma_with_visible_heads


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = make_synthetic_abaw(tmp_path_factory.mktemp("faces"), num_train=8, num_validation=96, num_test=8,
                               image_size=48)  # fmt: skip
    return root / "cropped_aligned"


@pytest.fixture(scope="module")
def emma(tmp_path_factory, faces):
    model = tiny_emma_with_visible_heads()
    folder = save_model_folder(model, tmp_path_factory.mktemp("emma") / "emma")
    record = export_onnx(folder, folder / "onnx", quantize="dynamic", validation_dir=faces, max_images=96)
    return model, folder, record


def test_emma_export_matches_torch_and_records_itself(emma):
    model, folder, record = emma
    export = folder / "onnx"
    assert {ONNX_FILE, INT8_FILE, RECORD_FILE, "config.json", "preprocessor_config.json"} <= {
        p.name for p in export.iterdir()
    }
    assert record == json.loads((export / RECORD_FILE).read_text())
    assert record["outputs"] == ["logits", "valence_arousal", "au_logits", "pooler_output", "cnn_logits"]
    assert record["model_type"] == "emma"
    assert set(record["parity_max_abs_difference"]) == {"random batch of 1", "random batch of 5", "96 real faces"}
    onnx_model = OnnxAffectModel(export, source_model_dir=folder)
    pixel_values = torch.randn(7, 3, IMAGE_SIZE, IMAGE_SIZE)  # a batch size the export never saw
    with torch.no_grad():
        expected = model(pixel_values=pixel_values)
    got = onnx_model(pixel_values=pixel_values)
    for name in ("logits", "valence_arousal", "au_logits"):
        torch.testing.assert_close(got[name], getattr(expected, name), atol=1e-4, rtol=1e-4)
    # What a temporal model reads per frame, from the graph as from torch: the pooled feature and the 28 scores
    # that feed EMMA's VA head (which gives back EMMA's own valence and arousal).
    features, scores = frame_inputs(got)
    expected_features, expected_scores = frame_inputs(expected)
    assert scores.shape == (7, 28)
    torch.testing.assert_close(features, expected_features, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(scores, expected_scores, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(model.va_head(expected_scores), expected.valence_arousal)


def test_int8_keeps_the_decisions_on_real_faces(emma):
    _, folder, record = emma
    agreement = record["int8_agreement_with_fp32"]
    assert agreement["images"] == 96
    assert agreement["expression_unchanged"] >= 0.95 and agreement["au_decisions_unchanged"] >= 0.95
    assert agreement["valence_arousal_max_abs_difference"] < 0.1
    int8 = OnnxAffectModel(folder / "onnx", int8=True)
    outputs = int8(pixel_values=torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE))
    assert outputs["logits"].shape == (2, 8) and outputs["au_logits"].shape == (2, 12)


@pytest.mark.parametrize("kind", ["cotex", "dan"])
def test_cotex_and_dan_export_with_their_logits(kind, tmp_path, faces):
    torch.manual_seed(0)
    if kind == "cotex":
        model = CotexForImageClassification(CotexConfig(**COTEX_PRESETS["tiny"], head_initializer_range=0.5))
    else:
        model = DanForImageClassification(DanConfig(**TINY_CNN))
    folder = save_model_folder(model.eval(), tmp_path / kind)
    record = export_onnx(folder, tmp_path / "export", quantize="static", calibration_dir=faces, max_images=16)
    assert record["outputs"] == (["logits", "pooler_output"] if kind == "cotex" else ["logits"])
    assert record["quantization"]["mode"] == "static"
    pixel_values = torch.randn(3, 3, model.config.image_size, model.config.image_size)
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).logits
    torch.testing.assert_close(OnnxAffectModel(tmp_path / "export")(pixel_values=pixel_values)["logits"], expected,
                               atol=1e-4, rtol=1e-4)  # fmt: skip
    assert OnnxAffectModel(tmp_path / "export", int8=True)(pixel_values=pixel_values)["logits"].shape == (
        3,
        6 if kind == "cotex" else 8,
    )


def test_an_export_that_does_not_match_is_refused(emma, tmp_path):
    model, folder, _ = emma
    copy = tmp_path / "copy"
    export_onnx(folder, copy)
    with pytest.raises(OnnxExportError, match="export with --quantize"):
        OnnxAffectModel(copy, int8=True)
    data = bytearray((copy / ONNX_FILE).read_bytes())
    data[-10] ^= 0xFF
    (copy / ONNX_FILE).write_bytes(bytes(data))
    with pytest.raises(OnnxExportError, match="sha256 changed"):
        OnnxAffectModel(copy)
    other = EmmaForAffectAnalysis(tiny_emma_config()).eval()  # other weights, the first model's export beside them
    other_folder = save_model_folder(other, tmp_path / "other")
    (other_folder / "onnx").symlink_to(folder / "onnx", target_is_directory=True)
    with pytest.raises(OnnxExportError, match="exported from other weights"):
        affect_hf.pipeline(other_folder, backend="onnx", device="cpu")
    with pytest.raises(OnnxExportError, match="not an ONNX export"):
        OnnxAffectModel(folder)


def test_predict_with_the_onnx_backend_gives_torchs_rows(emma, tmp_path, capsys):
    _, folder, _ = emma
    Image.fromarray(astronaut()).save(tmp_path / "photo.png")
    rows = {}
    for backend in ("torch", "onnx", "onnx-int8"):
        output = tmp_path / f"{backend}.csv"
        main(["predict", str(tmp_path / "photo.png"), "--model", str(folder), "--output", str(output),
              "--backend", backend, "--device", "cpu"])  # fmt: skip
        rows[backend] = affect_hf.inference.table.read_table(output).iloc[0]
    for column in ("valence", "arousal", "expression_Neutral", "AU12_probability"):
        assert rows["onnx"][column] == pytest.approx(rows["torch"][column], abs=1e-4)
        assert rows["onnx-int8"][column] == pytest.approx(rows["torch"][column], abs=0.1)
    assert rows["onnx"]["expression"] == rows["torch"]["expression"]


def test_the_onnx_backend_feeds_a_temporal_model_as_torch_does(emma, tmp_path):
    """The export's pooled feature and CNN scores are what a temporal model reads: its rows match torch's."""
    from affect_hf.data.synthetic_video import write_face_video
    from tests.test_temporal_predict import visible_temporal

    model, folder, _ = emma
    video = write_face_video(tmp_path / "two.mp4", astronaut()[40:300, 110:350], num_frames=6, fps=12,
                             size=(384, 216))  # fmt: skip
    temporal = visible_temporal(model.config)
    tables = {backend: affect_hf.analyze(video, folder, backend=backend, device="cpu", temporal=temporal,
                                         keep_frame_outputs=True) for backend in ("torch", "onnx")}  # fmt: skip
    assert len(tables["onnx"]) == len(tables["torch"]) == 12
    for column in ("valence", "arousal", "expression_Neutral", "AU12_probability", "frame_valence"):
        np.testing.assert_allclose(tables["onnx"][column], tables["torch"][column], atol=1e-4, err_msg=column)
    assert (tables["onnx"]["valence"] - tables["onnx"]["frame_valence"]).abs().max() > 0.01


def test_predict_abaw_and_evaluate_run_the_export(emma, faces, tmp_path):
    """`--backend onnx` through the evaluation layer: a valid MTL submission with torch's answers, and the same
    scores; int8 is scored beside it (what quantisation costs)."""
    from affect_hf.inference import abaw_test_names, validate_submission

    _, folder, record = emma
    root = faces.parent
    assert record["quantization"]["weight_bits"] == 7
    lines = {}
    for backend in ("torch", "onnx"):
        output = tmp_path / f"{backend}.txt"
        main(["predict-abaw", "--model", str(folder), "--backend", backend, "--data_dir", str(root), "--track", "mtl",
              "--output", str(output), "--num_workers", "0", "--device", "cpu"])  # fmt: skip
        assert validate_submission(output, "mtl", abaw_test_names(root, "mtl")) == 8
        lines[backend] = [line.split(",") for line in output.read_text().splitlines()[1:]]
    for ours, theirs in zip(lines["onnx"], lines["torch"], strict=True):
        assert ours[0] == theirs[0] and ours[3:] == theirs[3:]  # the image, the expression and the AU decisions
        assert [float(value) for value in ours[1:3]] == pytest.approx([float(value) for value in theirs[1:3]], abs=1e-4)
    scores = {}
    for backend in ("torch", "onnx", "onnx-int8"):
        main(["evaluate", "--model", str(folder), "--backend", backend, "--data_dir", str(root), "--track", "mtl",
              "--output_dir", str(tmp_path / backend), "--device", "cpu"])  # fmt: skip
        entry = json.loads((tmp_path / backend / "scores.json").read_text())["models"]["model"]
        assert entry["backend"] == backend
        scores[backend] = entry["scores"]
    for name in ("ccc_valence", "ccc_arousal", "P_EXPR"):
        assert scores["onnx"][name] == pytest.approx(scores["torch"][name], abs=1e-4)
    assert 0 <= scores["onnx-int8"]["P_MTL"] <= 3


def test_export_command_reports_bad_requests(emma, tmp_path, capsys):
    _, folder, _ = emma
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "onnx", "--model", str(folder), "--output", str(tmp_path / "x"), "--quantize", "static"])
    assert exit_info.value.code == 1 and "needs --calibration_dir" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    np.testing.assert_equal(len(list(tmp_path.iterdir())), 0)
