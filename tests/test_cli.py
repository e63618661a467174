"""The `affect-hf` command line: the demo end to end at a tiny size, and the synthetic-data command."""

import json

import pytest

from affect_hf.cli import main
from affect_hf.data import load_abaw_mtl
from affect_hf.data.abaw_lsd import load_abaw_lsd


def test_demo_learns_scores_saves_and_classifies(tmp_path, capsys):
    """A few hundred synthetic faces and four epochs already lift P_MTL far above the untrained model's."""
    main(["demo", "--output_dir", str(tmp_path), "--num_train", "512", "--num_validation", "128", "--epochs", "4"])
    printed = capsys.readouterr().out
    assert "untrained" in printed and "trained" in printed
    assert printed.count("cropped_aligned/") == 3, "three images classified by the pipeline"
    result = json.loads((tmp_path / "demo_scores.json").read_text())
    untrained, trained = result["untrained"], result["trained"]
    assert untrained["P_MTL"] < 0.6 and trained["P_MTL"] > untrained["P_MTL"] + 0.8
    assert trained["P_EXPR"] > 0.5 and trained["P_VA"] > 0.1 and trained["P_AU"] > untrained["P_AU"]
    assert (tmp_path / "run" / "best_model" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "best_model" / "preprocessor_config.json").is_file()


def test_make_synthetic_writes_a_readable_set(tmp_path, capsys):
    main(["make-synthetic", str(tmp_path / "abaw"), "--num_train", "40", "--num_validation", "20", "--num_test", "4"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "abaw")
    assert len(load_abaw_mtl(tmp_path / "abaw", "train")) == 40
    assert len(load_abaw_mtl(tmp_path / "abaw", "validation")) == 20


@pytest.mark.parametrize(
    ("kind", "options", "check"),
    [
        ("lsd", ["--num_train", "2", "--num_validation", "1"], lambda root: len(load_abaw_lsd(root, "train")) == 12),
        ("affectnet", ["--num_train", "2", "--num_validation", "1", "--layout", "csv"],
         lambda root: (root / "training.csv").is_file()),
        ("faces", ["--num_images", "6", "--images_per_shard", "3"], lambda root: len(list(root.glob("*.tar"))) == 2),
    ],
)  # fmt: skip
def test_make_synthetic_writes_every_kind_and_refuses_a_used_folder(tmp_path, capsys, kind, options, check):
    root = tmp_path / kind
    main(["make-synthetic", str(root), "--kind", kind, *options])
    assert capsys.readouterr().out.strip() == str(root) and check(root)
    with pytest.raises(SystemExit) as exit_info:
        main(["make-synthetic", str(root), "--kind", kind, *options])
    assert exit_info.value.code == 1 and "is not an empty folder" in capsys.readouterr().err


def test_unknown_command_exits_with_usage(capsys):
    with pytest.raises(SystemExit):
        main(["fly"])
    assert "usage" in capsys.readouterr().err
