"""The other recipes' data: LSD and AffectNet readers, synthetic faces, streamed image sources, transforms."""

import tarfile
import warnings
from collections import Counter

import numpy as np
import PIL.Image
import pytest
import torch

from affect_hf.data import (
    ClassBalancedDataset,
    DanTrainTransform,
    ImageDataset,
    RandomResizedCropTransform,
    augmentation_rng,
    class_label,
)
from affect_hf.data.abaw_lsd import load_abaw_lsd
from affect_hf.data.affectnet import load_affectnet
from affect_hf.data.streams import UNREADABLE_IMAGES_KEY, ImageSource, ImageStream
from affect_hf.data.synthetic_faces import make_synthetic_affectnet, make_synthetic_faces, make_synthetic_lsd
from affect_hf.labels import AFFECTNET_EXPRESSIONS, LSD_EXPRESSIONS


# ------------------------------------------------------------------------------------------------------ LSD


@pytest.mark.parametrize("layout", ["abaw", "authors"])
def test_lsd_reader_gives_canonical_classes_whatever_the_folder_names(tmp_path, layout):
    root = make_synthetic_lsd(tmp_path, num_train_per_class=3, num_validation_per_class=2, image_size=24, layout=layout)
    train, validation = load_abaw_lsd(root, "train"), load_abaw_lsd(root, "validation")
    assert train.features["label"].names == list(LSD_EXPRESSIONS)
    assert len(train) == 18 and len(validation) == 12
    assert Counter(train["label"]) == dict.fromkeys(range(6), 3)
    # Every image's folder names its class: ANGRER (the released misspelling) is Anger.
    for row in train:
        folder = row["name"].split("/")[0].upper()
        assert {"ANGRER": "ANGER"}.get(folder, folder) == LSD_EXPRESSIONS[row["label"]].upper()
    if layout == "abaw":
        assert (root / "training_set_synthetic_images" / "ANGRER").is_dir()


def test_lsd_unknown_class_folder_lists_the_expected_names(tmp_path):
    root = make_synthetic_lsd(tmp_path, num_train_per_class=1, num_validation_per_class=1, image_size=16)
    (root / "training_set_synthetic_images" / "CONTEMPT").mkdir()
    with pytest.raises(ValueError, match=r"unknown class folder\(s\) \['CONTEMPT'\].*Anger, Disgust, Fear"):
        load_abaw_lsd(root, "train")
    with pytest.raises(FileNotFoundError, match="training_set_synthetic_images, train"):
        load_abaw_lsd(tmp_path / "training_set_synthetic_images", "train")


def test_lsd_test_list_is_read_with_missing_labels_and_missing_files_counted(tmp_path):
    root = make_synthetic_lsd(tmp_path, num_train_per_class=1, num_validation_per_class=1, image_size=16)
    names = sorted(path.relative_to(root).as_posix() for path in root.rglob("*.jpg"))[:4]
    (root / "LSD_test_set_release.txt").write_text("image\n" + "\n".join(names + ["nowhere/1.jpg"]) + "\n")
    with pytest.warns(UserWarning, match="Skipped 1 of 5 images"):
        test = load_abaw_lsd(root, "test")
    assert list(test["name"]) == names and set(test["label"]) == {-1}


# ------------------------------------------------------------------------------------------------- AffectNet


@pytest.mark.parametrize("folder_names", ["names", "indices"])
def test_affectnet_folders_by_name_or_index(tmp_path, folder_names):
    root = make_synthetic_affectnet(
        tmp_path, num_train_per_class=4, num_validation_per_class=2, image_size=16, folder_names=folder_names
    )
    train = load_affectnet(root, "train")
    assert train.features["label"].names == list(AFFECTNET_EXPRESSIONS)
    counts = Counter(train["label"])
    assert set(counts) == set(range(8)) and counts[0] == 4 and counts[7] == 2, "unbalanced, as AffectNet"
    assert len(load_affectnet(root, "validation")) > 0


def test_affectnet_csv_skips_and_counts_non_expression_codes_and_missing_images(tmp_path):
    root = make_synthetic_affectnet(
        tmp_path, num_train_per_class=2, num_validation_per_class=1, image_size=16, layout="csv",
        num_non_expression_rows=5,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = load_affectnet(root, "train")
    messages = [str(warning.message) for warning in caught]
    assert any("Skipped 5 rows" in message and "10 Non-Face" in message for message in messages)
    lines = (root / "training.csv").read_text().splitlines()
    expression_rows = [line for line in lines[1:] if int(line.rsplit(",", 3)[1]) < 8]
    assert len(train) == len(expression_rows)
    # The released validation.csv has no header line: it is read in AffectNet's column order.
    validation_lines = (root / "validation.csv").read_text().splitlines()
    assert not validation_lines[0].startswith("subDirectory_filePath")
    with pytest.warns(UserWarning, match="Skipped 5 rows"):
        validation = load_affectnet(root, "validation")
    assert len(validation) == len(validation_lines) - 5 and validation[0]["name"] == validation_lines[0].split(",")[0]
    first = expression_rows[0].split(",")[0]
    assert train[0]["name"] == first and train[0]["label"] == int(expression_rows[0].rsplit(",", 3)[1])

    (root / "Manually_Annotated_Images" / first).unlink()
    with pytest.warns(UserWarning, match=f"Skipped 1 rows of .* no image .*{first}"):
        assert len(load_affectnet(root, "train")) == len(expression_rows) - 1
    (root / "training.csv").write_text("\n".join([*lines[:3], "x.jpg,0,0,1,1,,seven,0,0", *lines[3:]]) + "\n")
    with pytest.raises(ValueError, match=r"training.csv, line 4: expression 'seven' is not an integer"):
        load_affectnet(root, "train")


def test_synthetic_generators_refuse_a_used_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    for make in (make_synthetic_lsd, make_synthetic_affectnet, make_synthetic_faces):
        with pytest.raises(FileExistsError, match="not an empty folder"):
            make(tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"


# ---------------------------------------------------------------------------------------------- transforms


def test_random_resized_crop_is_reproducible_and_within_its_scale():
    transform = RandomResizedCropTransform(image_size=32)
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8))
    torch.testing.assert_close(transform(image, augmentation_rng(0, 1, 2)), transform(image, augmentation_rng(0, 1, 2)))
    assert transform(image, augmentation_rng(0, 1, 2)).shape == (3, 32, 32)
    areas = []
    for index in range(200):
        left, top, right, bottom = transform.crop_box(90, 60, augmentation_rng(0, 0, index))
        assert 0 <= left < right <= 90 and 0 <= top < bottom <= 60
        areas.append((right - left) * (bottom - top) / (90 * 60))
    assert 0.19 <= min(areas) and max(areas) <= 1.0 and np.std(areas) > 0.1


def test_dan_transform_is_reproducible_and_erases_about_half_the_time():
    transform = DanTrainTransform(image_size=32)
    image = PIL.Image.new("RGB", (40, 40), (200, 150, 100))
    first, again = transform(image, augmentation_rng(0, 0, 3)), transform(image, augmentation_rng(0, 0, 3))
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    # A constant image stays constant under flips; erasing writes exact zeros (the normalised mean is not zero).
    erased = [bool((transform(image, augmentation_rng(0, 0, i)) == 0).all(dim=0).any()) for i in range(200)]
    assert 0.35 < np.mean(erased) < 0.65


def test_class_balanced_sampling_draws_every_class_about_equally(tmp_path):
    root = make_synthetic_affectnet(tmp_path, num_train_per_class=8, num_validation_per_class=1, image_size=16)
    split = load_affectnet(root, "train")
    labels = np.asarray(split["label"])
    balanced = ClassBalancedDataset(ImageDataset(split, lambda image, rng: torch.zeros(1), class_label()), labels)
    drawn = Counter(labels[np.concatenate([balanced.indices(epoch) for epoch in range(30)])].tolist())
    assert max(drawn.values()) / min(drawn.values()) < 1.5, drawn
    assert not np.array_equal(balanced.indices(0), balanced.indices(1))
    np.testing.assert_array_equal(balanced.indices(4), ClassBalancedDataset(balanced.dataset, labels).indices(4))


# ------------------------------------------------------------------------------------------------- streams


@pytest.fixture(scope="module")
def face_folder(tmp_path_factory):
    """48 faces of mixed sizes, modes and formats in nested folders, 3 of them broken."""
    return make_synthetic_faces(tmp_path_factory.mktemp("faces"), num_images=48, num_corrupt=3, max_size=48)


@pytest.fixture(scope="module")
def face_shards(tmp_path_factory):
    """The same kind of faces as 4 WebDataset-style tar shards of 12 (with .json members)."""
    return make_synthetic_faces(
        tmp_path_factory.mktemp("shards"), num_images=48, num_corrupt=3, max_size=48, images_per_shard=12
    )


def _keys(stream: ImageStream, epoch: int, rank: int, world_size: int, batch_size: int, num_workers: int):
    """The record keys one process reads in an epoch, in the batches the loop takes."""
    loader = stream.dataloader(epoch, rank, world_size, batch_size, num_workers)
    loader.collate_fn = lambda records: [record["key"] for record in records]
    batches = []
    for batch in loader:
        if len(batches) == stream.batches_per_epoch(batch_size, world_size, num_workers):
            break
        batches.append(batch)
    return batches


@pytest.mark.parametrize("kind", ["folder", "list", "tar"])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_two_processes_read_each_training_image_once_per_epoch(kind, num_workers, face_folder, face_shards, tmp_path):
    if kind == "list":
        paths = sorted(path.relative_to(face_folder).as_posix() for path in face_folder.rglob("*.*"))
        (face_folder.parent / "faces.txt").write_text("\n".join(f"{face_folder.name}/{p}" for p in paths) + "\n")
        source_path = face_folder.parent / "faces.txt"
    else:
        source_path = face_folder if kind == "folder" else face_shards
    source = ImageSource(source_path, tmp_path / "train_images.txt")
    assert source.total == 48
    stream = ImageStream(source, RandomResizedCropTransform(16), seed=3, set_aside=12)
    assert stream.num_images == 36 and stream.batches_per_epoch(3, 2, num_workers) == 6
    for epoch in (0, 1):
        per_rank = [_keys(stream, epoch, rank, 2, 3, num_workers) for rank in (0, 1)]
        seen = [key for batches in per_rank for batch in batches for key in batch]
        assert sorted(seen) == list(range(12, 48)), "each training image once, none of the 12 held out"
        assert all(len(batches) == 6 for batches in per_rank)
    first, second = (_keys(stream, epoch, 0, 2, 3, num_workers) for epoch in (0, 1))
    assert first != second, "each epoch has its own order"
    assert [record["key"] for record in source.records(12)] == list(range(12))


def test_a_folder_source_is_listed_once_and_kept_for_resumed_runs(face_folder, tmp_path):
    list_path = tmp_path / "train_images.txt"
    ImageSource(face_folder, list_path)
    listed = list_path.read_text().splitlines()
    assert len(listed) == 48 and listed == sorted(listed) and all(line.startswith(str(face_folder)) for line in listed)
    (face_folder / "group_0" / "added_later.png").write_bytes(b"")
    try:
        assert ImageSource(face_folder, list_path).total == 48, "a resumed run reads its own list"
    finally:
        (face_folder / "group_0" / "added_later.png").unlink()


def test_tar_members_are_decoded_and_broken_ones_counted(face_shards, tmp_path):
    with tarfile.open(face_shards / "faces-000000.tar") as archive:
        assert {name.rsplit(".", 1)[1] for name in archive.getnames()} >= {"json"}
    stream = ImageStream(ImageSource(face_shards, tmp_path / "list.txt"), RandomResizedCropTransform(16), seed=0)
    loader = stream.dataloader(0, 0, 1, batch_size=48, num_workers=0)
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (45, 3, 16, 16) and batch[UNREADABLE_IMAGES_KEY] == 3
    assert torch.isfinite(batch["pixel_values"]).all()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_stream_resumes_exactly_from_its_saved_position(face_shards, tmp_path, num_workers):
    stream = ImageStream(ImageSource(face_shards, tmp_path / "list.txt"), RandomResizedCropTransform(16), seed=1)
    full = [batch["pixel_values"] for batch in stream.dataloader(2, 0, 1, 4, num_workers)]
    loader = stream.dataloader(2, 0, 1, 4, num_workers)
    iterator = iter(loader)
    head = [next(iterator)["pixel_values"] for _ in range(5)]
    state = loader.state_dict()
    del iterator
    resumed = stream.dataloader(2, 0, 1, 4, num_workers)
    resumed.load_state_dict(state)
    tail = [batch["pixel_values"] for batch in resumed]
    assert len(head) + len(tail) == len(full)
    for expected, actual in zip(full, head + tail, strict=True):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_sources_that_cannot_be_streamed_are_refused_by_name(face_folder, face_shards, tmp_path):
    compressed = tmp_path / "faces.tar.gz"
    compressed.write_bytes(b"\x1f\x8b\x08\x00")
    with pytest.raises(ValueError, match="faces.tar.gz: compressed tars cannot be read"):
        ImageSource(compressed, tmp_path / "l.txt")
    binary = tmp_path / "list.bin"
    binary.write_bytes(b"faces/1.jpg\n\xff\xfe\x00garbage\n")
    with pytest.raises(ValueError, match="list.bin, line 2: not UTF-8 text"):
        ImageSource(binary, tmp_path / "l.txt")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.jpg").write_bytes((face_folder / "group_0" / "000000.jpg").read_bytes())
    (mixed / "faces-000000.tar").write_bytes((face_shards / "faces-000000.tar").read_bytes())
    with pytest.raises(ValueError, match=r"holds both .tar shards \(1\) and images or folders \(1\)"):
        ImageSource(mixed, tmp_path / "l.txt")


def test_a_source_with_nothing_to_train_on_is_refused(face_folder, tmp_path):
    source = ImageSource(face_folder, tmp_path / "list.txt")
    with pytest.raises(ValueError, match="holds 48 images: none is left to train on after setting 48 aside"):
        ImageStream(source, RandomResizedCropTransform(16), set_aside=48)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image files"):
        ImageSource(tmp_path / "empty", tmp_path / "empty_list.txt")
    with pytest.raises(FileNotFoundError, match="no file matches"):
        ImageSource(str(tmp_path / "shards-*.tar"), tmp_path / "l.txt")
