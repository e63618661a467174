"""The package as users get it: a wheel with one top-level name (`affect_hf`, the model code and card templates
inside it), LICENSE and NOTICE; the names the README and the issues promise; `__all__` everywhere; the README's
Python snippets run; folders saved before the model code moved into the package still load."""

import importlib
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from skimage.data import astronaut

import affect_hf
from affect_hf.hub import save_model_folder
from tests.runs import BLOCK_PROJECT_IMPORTS, REPO_ROOT
from tests.test_modeling import tiny_emma_with_visible_heads


OLD_FOLDER = REPO_ROOT / "tests" / "data" / "emma_saved_by_0_1_0"
OLD_OUTPUTS = REPO_ROOT / "tests" / "data" / "emma_saved_by_0_1_0_outputs.safetensors"
PROMISED = {
    "affect_hf": ["pipeline", "analyze", "iter_analyze", "load_affect_model", "FaceResult", "EmmaForAffectAnalysis"],
    "affect_hf.data": ["load_abaw_mtl", "load_abaw_track", "load_abaw_lsd", "load_affectnet", "make_synthetic_abaw",
                       "make_synthetic_lsd", "make_synthetic_affectnet", "make_synthetic_faces"],
    "affect_hf.training": ["get_recipe", "train", "TrainingArguments", "TrainerState"],
    "affect_hf.models": ["load_affect_model", "resolve_device", "OnnxAffectModel"],
    "affect_hf.evaluation": ["load_split", "collect_predictions", "score_predictions", "evaluate_model"],
    "affect_hf.plots": ["save_plots", "valence_arousal_figure", "circumplex_figure"],
}  # fmt: skip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built offline from a clean copy of the checkout (what git tracks, or would: no build/ leftovers)."""
    work = tmp_path_factory.mktemp("wheel")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")  # fmt: skip
    source = work / "source"
    for name in filter(None, listed):
        if (REPO_ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w",
               str(work / "dist"), str(source)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    [built] = (work / "dist").glob("affect_hf-*.whl")
    return built


def test_the_wheel_installs_one_name_with_the_model_code_inside(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert {name.split("/")[0] for name in names} == {"affect_hf", "affect_hf-0.1.0.dist-info"}
    for inside in ("affect_hf/modeling/modeling_emma.py", "affect_hf/modeling/pipeline_affect.py",
                   "affect_hf/model_cards/emma.md", "affect_hf/faces/blazeface_short_range.safetensors",
                   "affect_hf/metrics/abaw_mtl/abaw_mtl.py", "affect_hf/__main__.py",
                   "affect_hf-0.1.0.dist-info/licenses/LICENSE",
                   "affect_hf-0.1.0.dist-info/licenses/NOTICE"):  # fmt: skip
        assert inside in names, inside
    with zipfile.ZipFile(wheel) as archive:
        assert "Apache License" in archive.read("affect_hf-0.1.0.dist-info/licenses/LICENSE").decode()
        metadata = archive.read("affect_hf-0.1.0.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata


def test_the_installed_wheel_imports_saves_and_loads_a_model_on_its_own(wheel, tmp_path):
    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target),
               str(wheel)]  # fmt: skip
    assert subprocess.run(install, capture_output=True, text=True).returncode == 0
    script = f"""
import importlib.util, json, sys
import torch
import affect_hf
from affect_hf.modeling import EmmaForAffectAnalysis
from affect_hf.training.presets import emma_config_from_preset
from transformers import AutoModel
assert importlib.util.find_spec("modeling") is None and importlib.util.find_spec("model_cards") is None
folder = {str(tmp_path / "saved")!r}
EmmaForAffectAnalysis(emma_config_from_preset("tiny")).save_pretrained(folder)
loaded = AutoModel.from_pretrained(folder)
print(json.dumps({{"package": affect_hf.__file__, "class": type(loaded).__module__,
                   "modules": sorted(name for name in sys.modules if name.split(".")[0] == "modeling")}}))
"""
    environment = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=environment, capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["package"].startswith(str(target)) and report["class"] == "affect_hf.modeling.modeling_emma"
    assert report["modules"] == []
    # The code travels flat beside the weights, and config.json names it as before the move.
    saved = tmp_path / "saved"
    assert {"modeling_emma.py", "configuration_emma.py", "modeling_vit_backbone.py", "pipeline_affect.py"} <= {
        path.name for path in saved.iterdir()
    }
    auto_map = json.loads((saved / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_emma.EmmaForAffectAnalysis"


def test_the_promised_names_are_importable_and_every_package_has_all():
    for module_name, names in PROMISED.items():
        module = importlib.import_module(module_name)
        for name in names:
            assert hasattr(module, name), f"{module_name}.{name}"
    for info in pkgutil.walk_packages(affect_hf.__path__, "affect_hf."):
        if not info.ispkg:
            continue
        package = importlib.import_module(info.name)
        assert hasattr(package, "__all__"), info.name
        for name in package.__all__:
            assert hasattr(package, name), f"{info.name}.{name}"
    assert "modeling" not in sys.modules and "model_cards" not in sys.modules  # the classes exist once


def test_the_readme_python_snippets_run(tmp_path, monkeypatch):
    folder = save_model_folder(tiny_emma_with_visible_heads(), tmp_path / "emma")
    Image.fromarray(astronaut()[20:320, 100:380]).save(tmp_path / "face.jpg")
    Image.fromarray(astronaut()).save(tmp_path / "group_photo.jpg")
    monkeypatch.chdir(tmp_path)
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    snippets = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert len(snippets) >= 3
    namespace = {"pixel_values": torch.randn(2, 3, 32, 32)}
    for snippet in snippets:
        exec(compile(snippet.replace("path/or/hub-id", str(folder)), "README.md", "exec"), namespace)
    assert namespace["out"].valence_arousal.shape == (2, 2)


def test_a_folder_saved_before_the_model_code_moved_still_loads(tmp_path):
    """A folder written by version 0.1.0 (the model code then a top-level package): through the installed classes,
    through `load_affect_model`, and as Hub remote code in a process that cannot import this package."""
    from transformers import AutoModel

    expected = load_file(OLD_OUTPUTS)
    for model in (AutoModel.from_pretrained(OLD_FOLDER), affect_hf.load_affect_model(OLD_FOLDER, device="cpu")):
        with torch.no_grad():
            outputs = model.eval()(pixel_values=expected["pixel_values"])
        for name in ("logits", "valence_arousal", "au_logits"):
            torch.testing.assert_close(getattr(outputs, name), expected[name], atol=1e-6, rtol=0)
    assert len(affect_hf.pipeline(OLD_FOLDER, device="cpu")(astronaut())) == 1
    script = (
        BLOCK_PROJECT_IMPORTS
        + f"""
import torch
from safetensors.torch import load_file
from transformers import AutoModel
expected = load_file({str(OLD_OUTPUTS)!r})
model = AutoModel.from_pretrained({str(OLD_FOLDER)!r}, trust_remote_code=True).eval()
with torch.no_grad():
    outputs = model(pixel_values=expected["pixel_values"])
assert torch.allclose(outputs.valence_arousal, expected["valence_arousal"], atol=1e-6)
print("remote code ok")
"""
    )
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=environment, capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 0 and "remote code ok" in result.stdout, result.stderr[-3000:]
