"""ABAW MTL reader, image transforms and synthetic data."""

import csv
import pickle
import warnings

import numpy as np
import PIL.Image
import pytest
import torch
from datasets import ClassLabel, Image, List, Value
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from affect_hf.data import (
    ABAW_MTL_HEADER,
    AbawMtlTorchDataset,
    AffectImageTransform,
    augmentation_rng,
    load_abaw_mtl,
    make_synthetic_abaw,
)
from affect_hf.data.synthetic import _CueLayout
from affect_hf.labels import (
    ABAW_EXPRESSIONS,
    MISSING_ACTION_UNIT,
    MISSING_EXPRESSION,
    MISSING_VALENCE_AROUSAL,
    NUM_ACTION_UNITS,
)


GOOD_LINE = "vid/00001.jpg,0.25,-0.5,4,1,0,0,1,0,0,1,0,0,0,1,0"


def _write_split(root, lines, images=("vid/00001.jpg",), header=ABAW_MTL_HEADER):
    """A hand-written training split: `lines` after the header, and a small JPEG for each of `images`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "training_set_annotations.txt").write_text("\n".join([header, *lines]) + "\n")
    for name in images:
        path = root / "cropped_aligned" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        PIL.Image.new("RGB", (16, 16), (10, 20, 30)).save(path)
    return root / "training_set_annotations.txt"


def _read_column(dataset, column):
    return np.array([row[column] for row in dataset])


# ----------------------------------------------------------------------------------------------------- reader


def test_round_trip_matches_written_annotations(tmp_path):
    root = make_synthetic_abaw(
        tmp_path,
        num_train=60,
        num_validation=20,
        num_test=10,
        image_size=32,
        frames_per_video=16,
        missing_label_rate=0.3,
        missing_image_count=3,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = load_abaw_mtl(root, "train")
    skip_warnings = [warning for warning in caught if "Skipped" in str(warning.message)]
    assert len(skip_warnings) == 1 and "Skipped 3 of 60 frames" in str(skip_warnings[0].message)

    with open(root / "training_set_annotations.txt", newline="") as file:
        rows = list(csv.reader(file))
    assert ",".join(rows[0]) == ABAW_MTL_HEADER
    written = [row for row in rows[1:] if (root / "cropped_aligned" / row[0]).exists()]
    assert len(written) == len(dataset) == 57

    assert list(dataset["name"]) == [row[0] for row in written]
    assert [row["image"]["path"] for row in dataset] == [str(root / "cropped_aligned" / row[0]) for row in written]
    np.testing.assert_array_equal(_read_column(dataset, "valence"), np.float32([row[1] for row in written]))
    np.testing.assert_array_equal(_read_column(dataset, "arousal"), np.float32([row[2] for row in written]))
    np.testing.assert_array_equal(_read_column(dataset, "expression"), [int(row[3]) for row in written])
    np.testing.assert_array_equal(
        _read_column(dataset, "action_units"), [[int(value) for value in row[4:]] for row in written]
    )

    # Missing codes survive, and a frame's AUs are missing all together, as in ABAW.
    action_units = _read_column(dataset, "action_units")
    assert (_read_column(dataset, "valence") == MISSING_VALENCE_AROUSAL).any()
    assert (_read_column(dataset, "expression") == MISSING_EXPRESSION).any()
    missing_au_rows = (action_units == MISSING_ACTION_UNIT).any(axis=1)
    assert missing_au_rows.any() and (action_units[missing_au_rows] == MISSING_ACTION_UNIT).all()

    features = dataset.features
    assert features["image"] == Image(decode=False)
    assert features["name"] == Value("string")
    assert features["valence"] == features["arousal"] == Value("float32")
    assert isinstance(features["expression"], ClassLabel) and features["expression"].names == list(ABAW_EXPRESSIONS)
    assert features["action_units"] == List(Value("int8"), length=NUM_ACTION_UNITS)


def test_hand_written_values_are_read_exactly(tmp_path):
    lines = [GOOD_LINE, "", "vid/00002.jpg,-5,-5,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1", ""]
    _write_split(tmp_path, lines, images=("vid/00001.jpg", "vid/00002.jpg"))
    first, second = load_abaw_mtl(tmp_path, "train")
    assert first["name"] == "vid/00001.jpg"
    assert (first["valence"], first["arousal"], first["expression"]) == (0.25, -0.5, 4)
    assert first["action_units"] == [1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0]
    assert (second["valence"], second["arousal"], second["expression"]) == (-5.0, -5.0, -1)
    assert second["action_units"] == [-1] * NUM_ACTION_UNITS


def test_validation_and_test_splits(synthetic_abaw_root):
    assert len(load_abaw_mtl(synthetic_abaw_root, "validation")) == 48
    test = load_abaw_mtl(synthetic_abaw_root, "test")
    assert len(test) == 16 and test[0]["name"] == "test_000/00001.jpg"
    assert set(test["valence"]) == set(test["arousal"]) == {MISSING_VALENCE_AROUSAL}
    assert set(test["expression"]) == {MISSING_EXPRESSION}
    assert (_read_column(test, "action_units") == MISSING_ACTION_UNIT).all()


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("vid/00001.jpg,0.1,0.2,3,0,0,0,0,0,0,0,0,0,0,0", "expected 16"),
        ("vid/00001.jpg,0.1,0.2,3,0,0,0,0,0,0,0,0,0,0,0,0,0", "expected 16"),
        ("vid/00001.jpg,0.1,high,3,0,0,0,0,0,0,0,0,0,0,0,0", "non-numeric"),
        ("vid/00001.jpg,0.1,0.2,8,0,0,0,0,0,0,0,0,0,0,0,0", "expression"),
        ("vid/00001.jpg,0.1,0.2,-2,0,0,0,0,0,0,0,0,0,0,0,0", "expression"),
        ("vid/00001.jpg,0.1,0.2,1.5,0,0,0,0,0,0,0,0,0,0,0,0", "expression"),
        ("vid/00001.jpg,0.1,0.2,3,0,0,0,0,0,2,0,0,0,0,0,0", "action units"),
        ("vid/00001.jpg,1.5,0.2,3,0,0,0,0,0,0,0,0,0,0,0,0", "valence"),
        ("vid/00001.jpg,0.1,-4,3,0,0,0,0,0,0,0,0,0,0,0,0", "valence"),
        ("vid/00001.jpg,nan,0.2,3,0,0,0,0,0,0,0,0,0,0,0,0", "valence"),
        (",0.1,0.2,3,0,0,0,0,0,0,0,0,0,0,0,0", "empty image name"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad_line, message):
    # Line 1 header, 2 good, 3 blank (still counted), 4 bad.
    path = _write_split(tmp_path, [GOOD_LINE, "", bad_line])
    with pytest.raises(ValueError, match=message) as error:
        load_abaw_mtl(tmp_path, "train")
    assert f"{path}, line 4" in str(error.value)


def test_missing_valence_arousal_code_is_accepted(tmp_path):
    _write_split(tmp_path, ["vid/00001.jpg,-5,0.3,3,0,0,0,0,0,0,0,0,0,0,0,0"])
    assert load_abaw_mtl(tmp_path, "train")[0]["valence"] == MISSING_VALENCE_AROUSAL


def test_wrong_header_names_file(tmp_path):
    path = _write_split(tmp_path, [GOOD_LINE], header=GOOD_LINE)
    with pytest.raises(ValueError, match="header") as error:
        load_abaw_mtl(tmp_path, "train")
    assert f"{path}, line 1" in str(error.value)
    path.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_abaw_mtl(tmp_path, "train")


def test_empty_split_is_an_error(tmp_path):
    _write_split(tmp_path, ["", ""])
    with pytest.raises(ValueError, match="empty"):
        load_abaw_mtl(tmp_path, "train")
    _write_split(tmp_path, [GOOD_LINE.replace("00001", "00009")])  # its image does not exist
    with pytest.warns(UserWarning, match="Skipped 1 of 1"), pytest.raises(ValueError, match="none of its images"):
        load_abaw_mtl(tmp_path, "train")


def test_missing_root_or_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent")):
        load_abaw_mtl(tmp_path / "absent", "train")
    with pytest.raises(FileNotFoundError, match="validation_set_annotations.txt"):
        load_abaw_mtl(tmp_path, "validation")
    with pytest.raises(ValueError, match="Unknown ABAW MTL split"):
        load_abaw_mtl(tmp_path, "training")


def test_test_list_with_labels_is_an_error(tmp_path):
    (tmp_path / "MTL_Challenge_test_set_release.txt").write_text("image\nvid/00001.jpg\nvid/00002.jpg,0.1\n")
    with pytest.raises(ValueError, match="line 3: expected only an image name"):
        load_abaw_mtl(tmp_path, "test")


# ------------------------------------------------------------------------------------------------- transforms


def test_unreadable_or_truncated_image_error_names_path(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    _write_split(tmp_path, [GOOD_LINE, GOOD_LINE.replace("00001", "00002")], images=())
    truncated, garbage = tmp_path / "cropped_aligned/vid/00001.jpg", tmp_path / "cropped_aligned/vid/00002.jpg"
    truncated.parent.mkdir(parents=True)
    PIL.Image.fromarray(noise).save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    garbage.write_bytes(b"not a jpeg")
    dataset = AbawMtlTorchDataset(load_abaw_mtl(tmp_path, "train"), image_size=32, train=False)
    for index, path in enumerate((truncated, garbage)):
        with pytest.raises(OSError, match=str(path)):
            dataset[index]


def test_eval_transform_of_constant_image_is_normalised_colour():
    colour = (255, 128, 0)
    pixels = AffectImageTransform(image_size=32, train=False)(PIL.Image.new("RGB", (50, 40), colour))
    assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.float32
    expected = (np.array(colour) / 255 - np.array(IMAGENET_DEFAULT_MEAN)) / np.array(IMAGENET_DEFAULT_STD)
    np.testing.assert_allclose(pixels.numpy(), np.broadcast_to(expected[:, None, None], (3, 32, 32)), atol=1e-5)


def test_train_transform_follows_the_recipe():
    transform = AffectImageTransform(image_size=224, train=True)
    assert transform.resize_size == 232  # the authors' int(224 * 1.04)
    assert transform(PIL.Image.new("RGB", (100, 120)), augmentation_rng(0, 0, 0)).shape == (3, 224, 224)
    with pytest.raises(ValueError, match="rng"):
        transform(PIL.Image.new("RGB", (100, 120)))


def test_augmentation_is_a_function_of_seed_epoch_index():
    image = PIL.Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    transform = AffectImageTransform(image_size=32, train=True)

    def augmented(seed, epoch, index):
        return transform(image, augmentation_rng(seed, epoch, index))

    for index in range(8):
        torch.testing.assert_close(augmented(0, 3, index), augmented(0, 3, index), rtol=0, atol=0)
    assert sum(not torch.equal(augmented(0, 0, index), augmented(0, 1, index)) for index in range(8)) >= 4
    assert sum(not torch.equal(augmented(0, 0, index), augmented(1, 0, index)) for index in range(8)) >= 4


def test_flip_and_colour_jitter_happen_at_their_rates():
    transform = AffectImageTransform(image_size=32, train=True)
    half_black = np.zeros((32, 32, 3), dtype=np.uint8)
    half_black[:, 16:] = 255  # dark left, bright right
    flipped = [
        (lambda pixels: pixels[:, :, :16].mean() > pixels[:, :, 16:].mean())(
            transform(PIL.Image.fromarray(half_black), augmentation_rng(0, 0, index))
        )
        for index in range(200)
    ]
    assert 0.35 < np.mean(flipped) < 0.65

    # Crop and flip leave a constant image unchanged; only the colour jitter changes it.
    constant = PIL.Image.new("RGB", (32, 32), (120, 80, 160))
    reference = AffectImageTransform(image_size=32, train=False)(constant)
    jittered = [
        not torch.allclose(transform(constant, augmentation_rng(0, 0, index)), reference, atol=1e-4)
        for index in range(300)
    ]
    assert 0.1 < np.mean(jittered) < 0.3


def test_torch_dataset_items_and_default_collate(synthetic_abaw_root):
    dataset = AbawMtlTorchDataset(load_abaw_mtl(synthetic_abaw_root, "train"), image_size=32, train=True)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert set(batch) == {"pixel_values", "valence_arousal", "expression", "action_units"}
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
    assert batch["valence_arousal"].shape == (4, 2) and batch["valence_arousal"].dtype == torch.float32
    assert batch["expression"].shape == (4,) and batch["expression"].dtype == torch.int64
    assert batch["action_units"].shape == (4, NUM_ACTION_UNITS) and batch["action_units"].dtype == torch.int64

    restored = pickle.loads(pickle.dumps(dataset))
    restored.set_epoch(2)
    dataset.set_epoch(2)
    torch.testing.assert_close(restored[5], dataset[5], rtol=0, atol=0)


def _batches(dataset, num_workers, epochs=(0,), persistent_workers=False):
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=8, num_workers=num_workers, persistent_workers=persistent_workers
    )
    batches = []
    for epoch in epochs:
        dataset.set_epoch(epoch)
        batches.append(list(loader))
    return batches


def test_dataloader_workers_do_not_change_the_batches(synthetic_abaw_root):
    dataset = AbawMtlTorchDataset(load_abaw_mtl(synthetic_abaw_root, "train"), image_size=32, train=True, seed=5)
    single_process = _batches(dataset, num_workers=0, epochs=(0, 1))
    # Persistent workers keep their copy of the dataset: the epoch must still reach them.
    with_workers = _batches(dataset, num_workers=2, epochs=(0, 1), persistent_workers=True)
    torch.testing.assert_close(with_workers, single_process, rtol=0, atol=0)
    assert not torch.equal(single_process[0][0]["pixel_values"], single_process[1][0]["pixel_values"])


# ---------------------------------------------------------------------------------------------- synthetic data


def test_synthetic_data_is_deterministic(tmp_path):
    options = dict(num_train=20, num_validation=8, num_test=4, image_size=32, frames_per_video=8)
    first, second, other = (
        make_synthetic_abaw(tmp_path / name, seed=seed, **options)
        for name, seed in (("first", 0), ("second", 0), ("other", 1))
    )
    for relative in ("training_set_annotations.txt", "cropped_aligned/train_001/00003.jpg"):
        assert (first / relative).read_bytes() == (second / relative).read_bytes()
        assert (first / relative).read_bytes() != (other / relative).read_bytes()
    assert not list(first.glob(".*"))  # no temporary file left behind


def test_synthetic_cues_are_mirror_symmetric():
    regions = _CueLayout(64).regions
    np.testing.assert_array_equal(regions, regions[:, ::-1])
    assert len(np.unique(regions)) == 3 + NUM_ACTION_UNITS  # background, disc, arousal band, 12 AU cells


def test_synthetic_labels_without_missing_rate_are_complete(tmp_path):
    root = make_synthetic_abaw(tmp_path, num_train=40, num_validation=4, num_test=2, missing_label_rate=0.0)
    dataset = load_abaw_mtl(root, "train")
    assert (_read_column(dataset, "valence") != MISSING_VALENCE_AROUSAL).all()
    assert (_read_column(dataset, "expression") != MISSING_EXPRESSION).all()
    assert (_read_column(dataset, "action_units") != MISSING_ACTION_UNIT).all()
