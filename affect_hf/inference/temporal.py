"""Affect over time in the tables: a temporal model (`--recipe temporal`) over each tracked face's frames, within a
video (`affect-hf predict --temporal`, `affect_hf.analyze(..., temporal=...)`).

It reads what the frame model gave each face (`FaceResult.features` and `frame_scores`) and answers in the same
columns. Frames are placed by their time at the frame rate the model was trained at (`frames_per_second` in its
config), so that a window spans the same seconds in a 60 frames/s phone video as in a 25 frames/s one.

- A causal model answers each frame as it comes, from the face's frames of the last window (the window it was
  trained on): the rows stream as before.
- A bidirectional model also reads the frames after a frame. Each face's frames are answered in windows side by
  side from its first frame, as the model was scored in training, so a face's rows are held until its track ends
  (unseen for `max_gap` seconds, when the tracker gives its id up, or at the end of its video). A track is cut
  at the first window boundary past `max_track_seconds`: that bounds what is held, and changes no answer (the
  windows after the cut are the ones an uncut track would have had). Frames leave in their order once every face
  in them is answered, so the table is behind the video by up to `max_track_seconds` + one window + `max_gap`;
  held frames drop their pictures, except the first video's when the overlay draws it.

A face seen on fewer frames than a window, and every face of a still picture, is answered from the frames it has (a
single frame: at frame level). A face without finite frame outputs keeps the frame model's answers, and no other
frame reads it. Each of the two is said once per run.
"""

import logging
import math
from collections import deque
from dataclasses import dataclass, field, replace

import torch
from transformers.utils import ModelOutput

from ..data.frame_features import window_rows
from ..modeling.pipeline_affect import affect_scores, describe
from .media import Frame
from .results import FaceResult


logger = logging.getLogger(__name__)

Batch = list[tuple[Frame, list[FaceResult]]]
# Positions are times x a frame rate, in float64: two frames closer than this are at the same place (a frame a
# whole window back is out of the window, not in it by a rounding error).
POSITION_TOLERANCE = 1e-6


@dataclass
class HeldFrame:
    """A frame on its way to the table: its faces, `waiting` of which the temporal model has not answered yet."""

    frame: Frame
    faces: list[FaceResult]
    waiting: int = 0


@dataclass
class Sighting:
    """One face on one frame as the temporal model reads it, and where its answer goes (`held.faces[slot]`; None
    once answered)."""

    features: torch.Tensor
    scores: torch.Tensor
    position: float
    held: HeldFrame | None
    slot: int


@dataclass
class Track:
    """One face id's frames in the current video: those not answered yet (bidirectional: the current stretch, whose
    windows start at `origin`) or those of the last window (causal)."""

    origin: float
    first_position: float
    last_position: float
    last_time: float
    frames: int = 0
    sightings: list[Sighting] = field(default_factory=list)


@dataclass
class Job:
    """A window to run: its sightings in time order; those from `first` on are answered."""

    sightings: list[Sighting]
    first: int = 0


class TemporalTracks:
    """`add(batch)` -> the frames that are ready, with their faces' temporal answers; `finish()` -> the rest.

    Batches come from `AnalysisRun` in frame order, with face ids from the tracker; frames leave in the same order.
    `keep_images`: the first video's frames keep their pictures while held (the overlay draws that video).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        max_track_seconds: float = 60.0,
        max_gap: float = 2.0,
        keep_frame_outputs: bool = False,
        keep_images: bool = False,
        batch_size: int = 64,
    ):
        if max_track_seconds <= 0:
            raise ValueError(f"max_track_seconds must be positive, got {max_track_seconds}")
        self.model, self.config = model, model.config
        self.window = float(self.config.window_frames or 1)
        self.frames_per_second = float(self.config.frames_per_second)
        self.causal = bool(self.config.causal)
        # A held stretch is whole windows: the first window boundary at or past `max_track_seconds`.
        self.stretch_span = math.ceil(max_track_seconds * self.frames_per_second / self.window) * self.window
        self.max_gap = max_gap
        self.keep_frame_outputs, self.keep_images, self.batch_size = keep_frame_outputs, keep_images, batch_size
        self.held: deque[HeldFrame] = deque()
        self.tracks: dict[int, Track] = {}
        self.video: tuple[int, str] | None = None  # (input, source) of the frames being read
        self.drawn_video: tuple[int, str] | None = None  # the first video: the overlay's
        self.jobs: list[Job] = []
        self.short_tracks = 0  # faces answered from fewer frames than a window (still pictures' faces too)
        self.unreadable_faces = 0  # faces left at frame level: no finite frame outputs

    def add(self, batch: Batch) -> Batch:
        for frame, faces in batch:
            self._take(frame, faces)
        self._answer()
        return self._released()

    def finish(self) -> Batch:
        """The end of the inputs: every held face is answered and every frame released."""
        self._end_video()
        self._answer()
        released = self._released()
        if self.held:
            raise RuntimeError(f"{len(self.held)} frames were never answered by the temporal model")
        return released

    def _take(self, frame: Frame, faces: list[FaceResult]) -> None:
        if frame.time is None or (frame.item, frame.source) != self.video:
            self._end_video()  # a new input: the last one's tracks end (they never continue into another)
            self.video = None if frame.time is None else (frame.item, frame.source)
            if self.drawn_video is None:
                self.drawn_video = self.video
        held = HeldFrame(frame, list(faces))
        self.held.append(held)
        if frame.time is None:  # a still picture: each face alone
            for slot, face in enumerate(faces):
                if self._readable(held, slot, frame.source):
                    held.waiting += 1
                    self.jobs.append(Job([Sighting(face.features, face.frame_scores, 0.0, held, slot)]))
                    self._note_short(face.face_id, frame.source, 1)
            return
        position = frame.time * self.frames_per_second
        lost = [face_id for face_id, track in self.tracks.items() if frame.time - track.last_time > self.max_gap]
        for face_id in lost:  # the tracker has given these ids up
            self._end_track(face_id)
        for slot, face in enumerate(faces):
            if not self._readable(held, slot, frame.source):
                continue
            track = self.tracks.get(face.face_id)
            if track is not None and position < track.last_position - POSITION_TOLERANCE:
                self._end_track(face.face_id)  # time went back (a damaged file): the track cannot go on in order
                track = None
            if track is None:
                track = self.tracks[face.face_id] = Track(position, position, position, frame.time)
            elif not self.causal and position - track.origin >= self.stretch_span - POSITION_TOLERANCE:
                self._answer_stretch(track)
                windows = math.floor((position - track.origin) / self.window + POSITION_TOLERANCE)
                track.origin += windows * self.window  # the next stretch's windows continue the same grid
            track.last_position, track.last_time = position, frame.time
            track.frames += 1
            track.sightings.append(Sighting(face.features, face.frame_scores, position, held, slot))
            held.waiting += 1
            if self.causal:  # the face's frames less than one window back, this one answered
                track.sightings = [seen for seen in track.sightings
                                   if position - seen.position < self.window - POSITION_TOLERANCE]  # fmt: skip
                self.jobs.append(Job(list(track.sightings), len(track.sightings) - 1))
        if not self.causal and not (self.keep_images and self.video == self.drawn_video):
            held.frame = replace(frame, image=frame.image.new_empty((3, 0, 0)))  # may be held: let its pixels go

    def _readable(self, held: HeldFrame, slot: int, source: str) -> bool:
        """Whether the model can read a face (the frame model's feature and scores, finite); if not, the face keeps
        the frame model's answers (said once per run)."""
        face = held.faces[slot]
        if face.features is not None and face.frame_scores is not None:
            if bool(torch.isfinite(face.features).all()) and bool(torch.isfinite(face.frame_scores).all()):
                return True
        if not self.unreadable_faces:
            logger.warning(
                "face %s of %s has no finite frame outputs for the temporal model to read: such faces keep the frame "
                "model's answers (said once per run)", face.face_id, source,
            )  # fmt: skip
        self.unreadable_faces += 1
        if self.keep_frame_outputs:
            held.faces[slot] = replace(face, frame_level=face)
        return False

    def _end_video(self) -> None:
        for face_id in list(self.tracks):
            self._end_track(face_id)

    def _end_track(self, face_id: int) -> None:
        track = self.tracks.pop(face_id)
        if not self.causal:
            self._answer_stretch(track)
        if track.last_position - track.first_position + 1 < self.window - POSITION_TOLERANCE:
            self._note_short(face_id, self.video[1], track.frames)

    def _answer_stretch(self, track: Track) -> None:
        """A bidirectional model's stretch of a track, queued in windows side by side (every frame once)."""
        positions = [sighting.position for sighting in track.sightings]
        if positions:
            bounds = window_rows(positions, self.window, each_frame_once=True, origin=track.origin)
            self.jobs += [Job(track.sightings[start:stop]) for start, stop in bounds]
        track.sightings = []

    def _note_short(self, face_id: int | None, source: str, frames: int) -> None:
        if self.window <= 1:
            return
        if not self.short_tracks:
            logger.warning(
                "face %s of %s was seen on %d frame(s), less than the temporal model's window of %g frames: such "
                "faces (and those of still pictures) are answered from the frames they have, a single frame at frame "
                "level (said once per run)", face_id, source, frames, self.window,
            )  # fmt: skip
        self.short_tracks += 1

    @torch.inference_mode()
    def _answer(self) -> None:
        """Run the queued windows, a batch of them at a time, and put each answer in its frame."""
        device = self.model.device
        for start in range(0, len(self.jobs), self.batch_size):
            jobs = self.jobs[start : start + self.batch_size]
            length = max(len(job.sightings) for job in jobs)
            features = torch.zeros(len(jobs), length, self.config.feature_size)
            scores = torch.zeros(len(jobs), length, self.config.num_scores)
            positions = torch.zeros(len(jobs), length, dtype=torch.float64)
            mask = torch.zeros(len(jobs), length, dtype=torch.bool)
            for row, job in enumerate(jobs):
                count = len(job.sightings)
                features[row, :count] = torch.stack([sighting.features for sighting in job.sightings])
                scores[row, :count] = torch.stack([sighting.scores for sighting in job.sightings])
                times = torch.tensor([sighting.position for sighting in job.sightings], dtype=torch.float64)
                positions[row, :count] = times - times[0]  # relative, so that fp32 keeps long videos' frames apart
                positions[row, count:] = positions[row, count - 1]
                mask[row, :count] = True
            outputs = self.model(features=features.to(device), scores=scores.to(device),
                                 positions=positions.float().to(device), mask=mask.to(device))  # fmt: skip
            rows = [row for row, job in enumerate(jobs) for _ in range(job.first, len(job.sightings))]
            columns = [column for job in jobs for column in range(job.first, len(job.sightings))]
            answered = ModelOutput(**{name: outputs[name][rows, columns].float().cpu()
                                      for name in ("logits", "valence_arousal", "au_logits")})  # fmt: skip
            answers = affect_scores(answered, self.config)
            index = 0
            for job in jobs:
                for sighting in job.sightings[job.first :]:
                    if sighting.held is None:  # windows partition a track: never the case, and never silently
                        raise RuntimeError("a frame was answered twice by the temporal model")
                    held, face = sighting.held, sighting.held.faces[sighting.slot]
                    held.faces[sighting.slot] = replace(
                        face, **describe(answers, index, self.config),
                        frame_level=face if self.keep_frame_outputs else None,
                    )  # fmt: skip
                    held.waiting -= 1
                    sighting.held = None  # answered (once): a causal history keeps what the model reads, not the frame
                    index += 1
        self.jobs = []

    def _released(self) -> Batch:
        released = []
        while self.held and not self.held[0].waiting:
            held = self.held.popleft()
            released.append((held.frame, held.faces))
        return released


__all__ = ["Batch", "TemporalTracks"]
