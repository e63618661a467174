"""Faces: the shipped BlazeFace and MTCNN on a real photo, weighted NMS, alignment to the ABAW crop template, and
`affect_hf.pipeline` (detect -> align -> model) against the model run on the same crops."""

import importlib.metadata
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from skimage.data import astronaut
from transformers import AutoImageProcessor, ViTMAEConfig, ViTMAEForPreTraining

import affect_hf
from affect_hf.faces import (
    ABAW_LANDMARKS,
    BLAZEFACE_WEIGHTS,
    FACE_TEMPLATE,
    MTCNN_WEIGHTS,
    BlazeFaceDetector,
    MtcnnDetector,
    align_faces,
    alignment_transforms,
    similarity_transforms,
    template_points,
    weighted_non_max_suppression,
)
from affect_hf.hub import save_model_folder
from affect_hf.modeling.pipeline_affect import affect_scores, describe
from affect_hf.models import NotAnAffectModelError, load_affect_model
from tests.test_modeling import TINY_VIT, tiny_emma_with_visible_heads


PHOTO = astronaut()  # 512 x 512, one frontal face
# The face of the photo, by eye: x from about 175 to 275, y from about 75 to 185.
FACE_REGION = (160, 60, 290, 195)


BLAZEFACE_POINTS = ("right_eye", "left_eye", "nose_tip", "mouth_center")


@pytest.fixture(scope="module")
def detector() -> BlazeFaceDetector:
    """BlazeFace with its own six points (the default replaces its eyes and nose with O-Net's five points)."""
    return BlazeFaceDetector(onet_points=False)


def landmark(faces, name):
    return faces.landmarks[0, faces.keypoint_names.index(name)]


def test_shipped_weights_name_their_source_and_licence():
    with safe_open(BLAZEFACE_WEIGHTS, "pt") as weights:
        metadata = weights.metadata()
    assert metadata["source"] == "face_detection_short_range.tflite" and metadata["license"] == "Apache-2.0"
    assert len(metadata["source_sha256"]) == 64
    # The installed distribution's NOTICE attributes them.
    [notice] = [file for file in importlib.metadata.distribution("affect-hf").files if file.name == "NOTICE"]
    text = notice.read_text()
    assert BLAZEFACE_WEIGHTS.name in text and "MediaPipe Authors" in text and "Apache License, Version 2.0" in text
    with safe_open(MTCNN_WEIGHTS, "pt") as weights:
        metadata = weights.metadata()
    assert metadata["license"] == "MIT" and all(
        len(metadata[f"{net}_sha256"]) == 64 for net in ("pnet", "rnet", "onet")
    )
    assert MTCNN_WEIGHTS.name in text and "Kaipeng Zhang" in text and "MIT License" in text


def test_detector_finds_the_face_of_a_real_photo_with_its_landmarks(detector):
    [faces] = detector([PHOTO])
    assert len(faces) == 1 and faces.scores[0] > 0.85
    x1, y1, x2, y2 = faces.boxes[0].tolist()
    left, top, right, bottom = FACE_REGION
    assert left <= x1 < x2 <= right and top <= y1 < y2 <= bottom
    right_eye, left_eye = landmark(faces, "right_eye"), landmark(faces, "left_eye")
    nose, mouth = landmark(faces, "nose_tip"), landmark(faces, "mouth_center")
    # The person's right eye is on the image's left; nose below the eyes and between them; mouth below the nose.
    assert right_eye[0] + 25 < left_eye[0]
    assert right_eye[0] < nose[0] < left_eye[0] and max(right_eye[1], left_eye[1]) < nose[1] < mouth[1]
    for point in faces.landmarks[0, :4]:
        assert x1 <= point[0] <= x2 and y1 <= point[1] <= y2


def test_detections_follow_crops_rescaling_and_mirroring_in_pixel_coordinates(detector):
    [full] = detector([PHOTO])
    top, left = 20, 120
    cropped = PHOTO[top:260, left:330]  # 240 x 210: letterboxed with side bars
    half = np.asarray(Image.fromarray(PHOTO).resize((256, 256), Image.BILINEAR))
    mirrored = np.ascontiguousarray(PHOTO[:, ::-1])
    in_crop, in_half, in_mirror = detector([cropped, half, mirrored])  # one batch of three sizes
    shift = torch.tensor([left, top])
    torch.testing.assert_close(in_crop.landmarks[0, :4] + shift, full.landmarks[0, :4], atol=6.0, rtol=0)
    torch.testing.assert_close(in_half.landmarks[0, :4] * 2, full.landmarks[0, :4], atol=6.0, rtol=0)
    # Mirroring swaps the eyes.
    mirrored_right_eye = landmark(in_mirror, "right_eye")
    assert abs((512 - mirrored_right_eye[0]) - landmark(full, "left_eye")[0]) < 6
    assert abs(mirrored_right_eye[1] - landmark(full, "left_eye")[1]) < 6
    # Batched or alone, the same numbers.
    [alone] = detector([cropped])
    torch.testing.assert_close(alone.boxes, in_crop.boxes)


def test_pictures_without_a_face_give_no_detection(detector):
    flat = np.full((240, 320, 3), 128, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    assert [len(faces) for faces in detector([flat, noise])] == [0, 0]
    assert detector([]) == []


def test_max_faces_and_threshold_limit_the_detections():
    two = np.concatenate([PHOTO[40:300, 100:360], PHOTO[40:300, 100:360]], axis=1)  # two faces side by side
    assert len(BlazeFaceDetector()([two])[0]) == 2
    assert len(BlazeFaceDetector(max_faces=1)([two])[0]) == 1
    assert len(BlazeFaceDetector(min_score=0.9999)([two])[0]) == 0


def test_weighted_nms_averages_overlapping_boxes_by_score():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]])
    keypoints = boxes[:, None, :2].repeat(1, 6, 1)
    scores = torch.tensor([0.6, 0.9, 0.7])
    kept_boxes, kept_keypoints, kept_scores = weighted_non_max_suppression(boxes, keypoints, scores, 0.3)
    torch.testing.assert_close(kept_scores, torch.tensor([0.9, 0.7]))
    merged = (0.9 * boxes[1] + 0.6 * boxes[0]) / 1.5
    torch.testing.assert_close(kept_boxes, torch.stack([merged, boxes[2]]))
    torch.testing.assert_close(kept_keypoints[0, 0], merged[:2])
    degenerate = torch.tensor([[5.0, 5, 5, 5]])  # zero size: overlaps nothing, not even itself
    kept = weighted_non_max_suppression(degenerate, keypoints[:1], scores[:1], 0.3)
    torch.testing.assert_close(kept[0], degenerate)
    empty = weighted_non_max_suppression(boxes[:0], keypoints[:0], scores[:0], 0.3)
    assert [len(part) for part in empty] == [0, 0, 0]


def test_similarity_fit_recovers_a_known_transform():
    angle, scale, shift = math.radians(25), 1.7, torch.tensor([40.0, -12.0])
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    source = torch.rand(3, 5, 2) * 100
    target = source[0] @ (scale * rotation).T + shift
    matrix = similarity_transforms(source[:1], target)[0]
    torch.testing.assert_close(matrix[:2, :2].float(), scale * rotation, atol=1e-5, rtol=0)
    torch.testing.assert_close(matrix[:2, 2].float(), shift, atol=1e-4, rtol=0)


def test_aligned_crop_puts_the_landmarks_on_the_abaw_template(detector):
    [faces] = detector([PHOTO])
    for size in (112, 224):
        matrix = alignment_transforms(faces.landmarks, size, faces.keypoint_names)[0].float()
        points = faces.landmarks[0, :4] @ matrix[:2, :2].T + matrix[:2, 2]
        # Four points, four degrees of freedom fitted: within a few percent of the crop.
        torch.testing.assert_close(points, template_points(size, BLAZEFACE_POINTS), atol=0.03 * size, rtol=0)
        eyes = points[1] - points[0]
        assert abs(math.degrees(math.atan2(eyes[1], eyes[0]))) < 3  # eye line level
        # Inter-ocular distance near the template's (BlazeFace's eyes sit a little wider than the template's).
        assert abs(eyes.norm() / size - (73.5318 - 38.2946) / 112) < 0.05


def test_alignment_warps_the_right_way_round():
    """Dots painted where a known similarity puts the template's points land on the template in the crop."""
    size, angle, scale, shift = 64, math.radians(-30), 2.5, torch.tensor([70.0, 40.0])
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    template = template_points(size, ABAW_LANDMARKS)
    in_image = template @ (scale * rotation).T + shift  # crop -> image
    image = torch.zeros(3, 240, 260, dtype=torch.uint8)
    for x, y in in_image.tolist():
        image[:, int(y) - 3 : int(y) + 4, int(x) - 3 : int(x) + 4] = 255
    [crop] = align_faces(image, in_image[None], size, ABAW_LANDMARKS)
    for x, y in template.tolist():
        assert crop[0, int(y), int(x)] > 200, (x, y)
    assert crop[0].mean() < 40  # the rest stays dark
    assert set(FACE_TEMPLATE) == {*ABAW_LANDMARKS, "mouth_center"}


@pytest.fixture(scope="module")
def emma_folder(tmp_path_factory):
    model = tiny_emma_with_visible_heads()
    return model, save_model_folder(model, tmp_path_factory.mktemp("faces") / "emma")


def test_pipeline_finds_aligns_and_scores_every_face(emma_folder):
    model, folder = emma_folder
    analyzer = affect_hf.pipeline(folder, device="cpu")
    two = np.concatenate([PHOTO[40:300, 100:360], PHOTO[40:300, 100:360, ::-1]], axis=1)
    results = analyzer([PHOTO, two, np.full((50, 80, 3), 90, np.uint8)])
    assert [len(faces) for faces in results] == [1, 2, 0]
    face = results[0][0]
    assert set(face) == {"box", "score", "landmarks", "face_id", "valence", "arousal", "expression",
                         "expression_scores", "au_probabilities", "au_active", "yaw", "pitch", "roll",
                         "sharpness"}  # fmt: skip
    assert [face["face_id"] for face in results[1]] == [0, 1]  # a picture's faces by rank
    assert set(face["landmarks"]) == set(ABAW_LANDMARKS)  # pictures go to MTCNN
    # The same face through the saved image processor and the model, computed here.
    [faces] = MtcnnDetector()([PHOTO])
    crop = align_faces(torch.from_numpy(PHOTO).permute(2, 0, 1), faces.landmarks, model.config.image_size,
                       faces.keypoint_names)[0]  # fmt: skip
    processor = AutoImageProcessor.from_pretrained(folder)
    pixels = processor(images=crop.round().clamp(0, 255).byte().permute(1, 2, 0).numpy(), return_tensors="pt")
    with torch.no_grad():
        expected = describe(affect_scores(model(**pixels), model.config), 0, model.config)
    assert face["valence"] == pytest.approx(expected["valence"], rel=2e-2, abs=2e-3)
    assert face["arousal"] == pytest.approx(expected["arousal"], rel=2e-2, abs=2e-3)
    assert face["expression_scores"] == pytest.approx(expected["expression_scores"], abs=5e-3)
    assert face["au_probabilities"] == pytest.approx(expected["au_probabilities"], abs=5e-3)
    assert max(face["au_probabilities"].values()) - min(face["au_probabilities"].values()) > 0.1  # not all alike
    assert face["expression"] == expected["expression"]
    # A path works like an array, and one picture gives one list of faces.
    path = folder.parent / "photo.png"
    Image.fromarray(PHOTO).save(path)
    from_path = analyzer(str(path))
    assert len(from_path) == 1 and from_path[0]["valence"] == pytest.approx(face["valence"], abs=1e-5)


def test_a_folder_that_is_not_an_affect_model_is_refused_before_loading_weights(tmp_path):
    config = ViTMAEConfig(**{key: value for key, value in TINY_VIT.items() if key in ViTMAEConfig().to_dict()})
    ViTMAEForPreTraining(config).save_pretrained(tmp_path / "mae")
    with pytest.raises(NotAnAffectModelError, match="'vit_mae' model, not an affect model"):
        load_affect_model(tmp_path / "mae")
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        load_affect_model(tmp_path / "missing" / "emma")
