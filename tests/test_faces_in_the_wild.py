"""Faces as real photos and videos hold them, built from real photos: a crowd of 20 faces from 32 to 300 pixels
wide (mirrored, grey, turned), a 12000 x 12000 photo, faces cut by the frame's edge, alignment on true landmarks,
head pose, two different people crossing (one hidden for a second), variable frame rates, and labels that read at a
photo's width."""

import collections
import fractions
import importlib
import math
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import PIL.Image
import pytest
import torch
from skimage.data import astronaut

import affect_hf
from affect_hf.data.scenes import ASTRONAUT_POINTS, crowd, face_tile, write_crossing_video
from affect_hf.faces import (
    ABAW_LANDMARKS,
    AutoDetector,
    BlazeFaceDetector,
    MtcnnDetector,
    align_faces,
    alignment_transforms,
    load_face_detector,
    mtcnn,
    similarity_transforms,
    template_points,
)
from affect_hf.faces.pose import MEAN_FACE, _rotations, fit_poses, head_pose
from affect_hf.hub import save_model_folder
from affect_hf.inference import FaceAffectAnalyzer
from affect_hf.inference.overlay import label_font
from tests.runs import REPO_ROOT
from tests.test_modeling import tiny_emma_with_visible_heads


@pytest.fixture(scope="module")
def detector() -> AutoDetector:
    return AutoDetector()


@pytest.fixture(scope="module")
def emma_folder(tmp_path_factory):
    return save_model_folder(tiny_emma_with_visible_heads(), tmp_path_factory.mktemp("wild") / "emma")


def test_every_face_of_a_crowd_is_found_once_with_its_points_where_they_were_pasted(detector):
    scene, pasted = crowd()  # 2000 x 1400, faces 32-300 px wide
    [found] = detector([scene])
    assert len(found) == len(pasted) == 20
    names = found.keypoint_names
    centres = found.landmarks.mean(1)
    for face in pasted:
        distance = (centres - torch.tensor(face.centre)).norm(dim=1)
        [match] = (distance < face.width / 2).nonzero().flatten().tolist()  # exactly one detection per face
        for name in ("right_eye", "left_eye", "mouth_right", "mouth_left"):
            error = (found.landmarks[match, names.index(name)] - torch.tensor(face.points[name])).norm()
            assert error < 0.05 * face.width, (face.width, name, float(error))
    assert len(BlazeFaceDetector()([scene])[0]) < 10  # the video detector is not made for crowds


def alignment_error(detector, picture: np.ndarray, known: dict) -> tuple[float, float]:
    """(residual, displacement) as fractions of a 112 px crop: the known points' mean distance from the template
    after the alignment the detector's points give, and their mean distance from where the alignment on the known
    points themselves puts them (that alignment's own residual is the face's difference from the mean template)."""
    [faces] = detector([picture])
    size, known = 112, torch.tensor([[known[name] for name in ABAW_LANDMARKS]])
    found = alignment_transforms(faces.landmarks[:1], size, faces.keypoint_names)[0].float()
    ideal = similarity_transforms(known, template_points(size, ABAW_LANDMARKS))[0].float()
    placed = known[0] @ found[:2, :2].T + found[:2, 2]
    residual = (placed - template_points(size, ABAW_LANDMARKS)).norm(dim=1).mean() / size
    displacement = (placed - (known[0] @ ideal[:2, :2].T + ideal[:2, 2])).norm(dim=1).mean() / size
    return float(residual), float(displacement)


def test_alignment_on_the_five_true_points_beats_blazeface_alone(detector):
    """Before: BlazeFace's own points (its mouth centre for the corners); after: the defaults' five points."""
    pictures = [(astronaut(), ASTRONAUT_POINTS)]
    for width, mirrored, angle in ((140, False, 0.0), (110, True, 12.0), (180, False, -20.0)):
        tile, points = face_tile(width, mirrored=mirrored, angle=angle)
        canvas = PIL.Image.new("RGB", (tile.width + 200, tile.height + 200), (100, 100, 100))
        canvas.paste(tile, (100, 100))
        pictures.append((np.asarray(canvas), {name: (x + 100, y + 100) for name, (x, y) in points.items()}))
    before = np.mean([alignment_error(BlazeFaceDetector(onet_points=False), p, k) for p, k in pictures], axis=0)
    after = np.mean([alignment_error(detector, p, k) for p, k in pictures], axis=0)
    assert after[0] < before[0] and after[1] < 0.015 and after[1] < 0.5 * before[1], (before, after)


def test_head_pose_is_recovered_and_follows_mirrors_and_turns(detector):
    # The solver on the mean face itself, turned: the angles come back.
    model = np.array([MEAN_FACE[name] for name in ABAW_LANDMARKS])
    for angles in ((30.0, 0.0, 0.0), (-45.0, 10.0, 5.0), (0.0, -20.0, 30.0)):
        points = 1.3 * (model @ _rotations(*angles).T)[:, :2] + (200.0, 150.0)
        assert head_pose(points) == pytest.approx(angles, abs=0.5)
        # The picture turned by 30 degrees counterclockwise: only roll changes, by 30 (also for a turned head).
        turn = math.radians(30.0)
        screen = np.array([[math.cos(turn), math.sin(turn)], [-math.sin(turn), math.cos(turn)]])  # y points down
        turned = (points - (200.0, 150.0)) @ screen.T + (200.0, 150.0)
        assert head_pose(turned) == pytest.approx((angles[0], angles[1], angles[2] + 30.0), abs=0.5)
    # A real frontal face; its mirror flips yaw and roll; turning the picture turns roll by as much.
    picture = PIL.Image.fromarray(astronaut())
    poses = {}
    for name, image in (("photo", picture), ("mirror", picture.transpose(PIL.Image.FLIP_LEFT_RIGHT)),
                        ("turned", picture.rotate(20, resample=PIL.Image.BICUBIC))):  # fmt: skip
        [faces] = detector([np.asarray(image)])
        indices = [faces.keypoint_names.index(n) for n in ABAW_LANDMARKS]
        poses[name] = head_pose(faces.landmarks[0, indices].numpy())
    yaw, pitch, roll = poses["photo"]
    assert abs(yaw) < 10 and abs(pitch) < 20 and abs(roll) < 8
    assert poses["mirror"][0] == pytest.approx(-yaw, abs=3) and poses["mirror"][2] == pytest.approx(-roll, abs=3)
    assert poses["turned"][2] - roll == pytest.approx(20, abs=5) and abs(poses["turned"][0] - yaw) < 10


def test_the_poses_of_many_faces_are_fitted_at_once_as_one_at_a_time():
    """One batched fit for a frame's faces: each face's answer is its own fit's, and poses within reach (yaw to 60,
    pitch to 30 degrees, any roll, any size and place) come back from exact points."""
    rng = np.random.default_rng(0)
    count = 64
    angles = np.column_stack([rng.uniform(-60, 60, count), rng.uniform(-30, 30, count), rng.uniform(-170, 170, count)])
    rotations = _rotations(*angles.T)
    model = np.array([MEAN_FACE[name] for name in ABAW_LANDMARKS])
    sizes, places = rng.uniform(0.3, 3.0, (count, 1, 1)), rng.uniform(0, 1000, (count, 1, 2))
    points = sizes * (model @ rotations.transpose(0, 2, 1))[..., :2] + places
    fitted = fit_poses(points)
    np.testing.assert_allclose(fitted, angles, atol=0.01)
    noisy = points + rng.normal(0, 1.5, points.shape)  # a detector's jitter: each face still fits alone
    np.testing.assert_allclose(fit_poses(noisy), [head_pose(face) for face in noisy], atol=1e-3)
    assert fit_poses(np.zeros((0, 5, 2))).shape == (0, 3)


def test_two_people_who_cross_keep_their_ids_also_after_one_is_hidden(emma_folder, tmp_path):
    path, _ = write_crossing_video(tmp_path / "crossing.mp4")  # the cameraman hidden from 3.6 s to 4.6 s
    table = affect_hf.analyze(path, emma_folder, device="cpu")
    frames = _decoded(path)
    ids = {"astronaut": collections.Counter(), "cameraman": collections.Counter()}
    for row in table[table["face_id"].notna()].itertuples():
        region = frames[int(row.frame)][int(row.box_y1) : int(row.box_y2), int(row.box_x1) : int(row.box_x2)]
        colourful = float((region.max(-1).astype(int) - region.min(-1)).mean()) > 12  # the cameraman is grey
        ids["astronaut" if colourful else "cameraman"][int(row.face_id)] += 1
    for person, counts in ids.items():
        assert counts.most_common(1)[0][1] >= 0.95 * sum(counts.values()), (person, counts)
    assert ids["astronaut"].most_common(1)[0][0] != ids["cameraman"].most_common(1)[0][0]
    hidden = table[(table["time"] >= 3.6) & (table["time"] < 4.6)]
    assert hidden.groupby("frame")["face_id"].count().max() == 1  # hidden indeed: one face in those frames


def _decoded(path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_frames_of_a_variable_frame_rate_video_keep_their_own_times(emma_folder, tmp_path):
    import av

    times_ms = [0, 33, 70, 100, 180, 200, 233, 300, 301, 340, 400, 480, 510, 640]
    path = tmp_path / "phone.mp4"
    face = np.asarray(PIL.Image.fromarray(astronaut()).resize((320, 320)))
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 320, "yuv420p"
        stream.time_base = stream.codec_context.time_base = fractions.Fraction(1, 1000)
        for time in times_ms:
            frame = av.VideoFrame.from_ndarray(face, format="rgb24")
            frame.pts, frame.time_base = time, fractions.Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    table = affect_hf.analyze(path, emma_folder, device="cpu")
    assert list(table["frame"]) == list(range(len(times_ms)))  # unique, increasing, in presentation order
    np.testing.assert_allclose(table["time"], np.array(times_ms) / 1000, atol=1e-6)
    every_third = affect_hf.analyze(path, emma_folder, device="cpu", every_n_frames=3)
    assert list(every_third["frame"]) == list(range(0, len(times_ms), 3))


def test_labels_read_at_the_picture_s_width():
    small, large = label_font(400), label_font(1000)
    height = lambda font: font.getbbox("#1 Happiness V+0.50")[3] - font.getbbox("#1 Happiness V+0.50")[1]  # noqa: E731
    assert height(large) >= 14 and height(large) > 1.8 * height(small) * 0.7
    assert math.isclose(large.size, 20)


def test_a_12000_pixel_photo_is_searched_in_tiles_within_3_gib(emma_folder, tmp_path):
    canvas = PIL.Image.new("RGB", (12000, 12000), (120, 120, 120))
    centres = []
    for width, corner in ((60, (1000, 1000)), (400, (6000, 2000)), (3000, (2000, 6000))):
        tile, points = face_tile(width)
        canvas.paste(tile, corner)
        centres.append(np.mean(list(points.values()), axis=0) + corner)
    canvas.save(tmp_path / "large.jpg", quality=90)
    del canvas
    script = textwrap.dedent(f"""
        import resource
        from affect_hf.cli import main
        main(["predict", {str(tmp_path / "large.jpg")!r}, "--model", {str(emma_folder)!r}, "--device", "cpu",
              "--output", {str(tmp_path / "faces.csv")!r}])
        print("peak", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    peak_gib = int(done.stdout.split("peak")[-1]) / 2**20
    assert peak_gib < 3, f"{peak_gib:.2f} GiB"  # the photo alone is 0.4 GB; as float it would be 1.7 GB
    table = pd.read_csv(tmp_path / "faces.csv")
    assert len(table) == 3  # 60, 400 and 3000 pixels wide: each found once
    found = np.stack([table[[f"{name}_x", f"{name}_y"]].to_numpy() for name in ABAW_LANDMARKS]).mean(0)
    for centre, width in zip(centres, (60, 400, 3000), strict=True):
        assert np.linalg.norm(found - centre, axis=1).min() < 0.1 * width


def test_large_levels_and_boxes_are_resized_in_bands_and_searched_in_tiles_as_a_whole():
    photo = torch.from_numpy(np.array(PIL.Image.fromarray(astronaut()).resize((1500, 1100)))).permute(2, 0, 1)
    whole = torch.nn.functional.interpolate(photo[None].float(), size=(640, 873), mode="area")[0]
    banded = mtcnn.area_resize(photo, (640, 873), float_pixels=50_000)  # about 30 rows of the photo per band
    torch.testing.assert_close(banded, whole, atol=1e-3, rtol=0)
    # A box beyond the edges: black outside, exactly as a crop of the photo padded with zeros.
    padded = torch.nn.functional.pad(photo.float(), (100, 100, 100, 100))
    box = (-60, 1000, 140, 1180)  # its left 60 and bottom 80 pixels lie outside
    expected = torch.nn.functional.interpolate(padded[None, :, 1100:1280, 40:240], size=(48, 48), mode="area")[0]
    torch.testing.assert_close(mtcnn.area_resize(photo, (48, 48), box), expected)
    # Bands work on the photo's own device (meta stands in for a GPU here: no CPU tensor may meet it).
    on_device = mtcnn.area_resize(photo.to("meta"), (640, 873), float_pixels=50_000)
    assert on_device.device.type == "meta" and on_device.shape == (3, 640, 873)
    # P-Net tile by tile finds the whole level's candidate cells, with their values, also at odd sizes.
    pnet = MtcnnDetector().network.pnet
    level = whole[:, :601, :871]
    with torch.inference_mode():
        probability, offsets = pnet(mtcnn.normalise(level)[None])
        cells, scores, cell_offsets = mtcnn.pnet_candidates(pnet, level, threshold=0.3, tile=128)
    rows, columns = torch.nonzero(probability[0] >= 0.3, as_tuple=True)
    assert len(rows) > 20  # the face and some background
    torch.testing.assert_close(cells, torch.stack([columns, rows], 1))
    torch.testing.assert_close(scores, probability[0, rows, columns], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cell_offsets, offsets[0, :, rows, columns].T, atol=1e-5, rtol=1e-4)


def test_a_face_cut_by_the_frame_s_edge_is_aligned_with_black_fill():
    photo = torch.from_numpy(astronaut().copy()).permute(2, 0, 1)
    points = torch.tensor([ASTRONAUT_POINTS[name] for name in ABAW_LANDMARKS])[None]
    cut = photo[:, :, 215:]  # the person's right eye (x = 203) and mouth corner lie outside the frame
    blacked = photo.clone()
    blacked[:, :, :215] = 0
    crop = align_faces(cut, points - torch.tensor([215.0, 0.0]), 112, ABAW_LANDMARKS)
    torch.testing.assert_close(crop, align_faces(blacked, points, 112, ABAW_LANDMARKS), atol=0.05, rtol=0)
    assert 0.2 < float((crop[0].amax(0) == 0).float().mean()) < 0.6  # the part beyond the edge is black


def test_large_pictures_are_batched_within_the_pixel_budget(emma_folder, monkeypatch):
    pictures = [astronaut(), astronaut()[:, ::-1].copy(), astronaut()[::2, ::2].copy()]
    assert [len(batch) for batch in affect_hf.iter_analyze(pictures, emma_folder, device="cpu")] == [3]
    # A budget of 1.5 photos: the first goes alone, the second with the small third (a quarter of a photo).
    monkeypatch.setattr(importlib.import_module("affect_hf.inference.predict"), "BATCH_PIXELS", int(1.5 * 512 * 512))
    assert [len(batch) for batch in affect_hf.iter_analyze(pictures, emma_folder, device="cpu")] == [1, 2]


def test_a_detector_without_its_weights_says_how_to_make_them(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"mtcnn\.safetensors are missing: reinstall affect-hf, or make it "
        r"with scripts/convert_mtcnn\.py \(from the facenet-pytorch 2\.6\.0",
    ):
        load_face_detector("mtcnn", weights=tmp_path / "mtcnn.safetensors")
    with pytest.raises(FileNotFoundError, match="scripts/convert_blazeface.py"):
        load_face_detector("blazeface", weights=tmp_path / "blazeface_short_range.safetensors")


class ImagesOnlyDetector:
    """A user's detector written to the first interface: images in, no `video` argument."""

    def __init__(self):
        self.inner = BlazeFaceDetector()
        self.keypoint_names = self.inner.keypoint_names

    def __call__(self, images):
        return self.inner(images)


def test_a_detector_that_takes_only_images_still_fits(emma_folder):
    analyzer = FaceAffectAnalyzer.from_pretrained(emma_folder, device="cpu", detector=ImagesOnlyDetector())
    [faces] = analyzer.analyze_images([astronaut()], video=[False])
    assert len(faces) == 1
    assert len(affect_hf.analyze(astronaut(), analyzer)) == 1
