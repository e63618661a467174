"""Pictures, folders and videos -> one table row per frame x face, through one code path for notebooks and files:
`affect_hf.analyze` (a pandas DataFrame), `affect_hf.iter_analyze` (DataFrames batch by batch, for large inputs)
and `affect-hf predict` (`predict`: a CSV file or a Parquet folder, streamed to disk).

Frames are decoded ahead in a background thread (`media.prefetched_frames`), batched across frames and files to
the detector and the affect model on one device, tracked per video into stable face ids, optionally smoothed over
time, and handed on batch by batch. Ctrl-C, a crash or a broken file never loses the rows already written.
"""

import hashlib
import json
import logging
import os
import time as clock
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from tqdm.auto import tqdm

from ..data.pictures import MAX_PIXELS
from ..files import OutputLock
from ..models import (
    TEMPORAL_MODEL_TYPE,
    check_frame_model,
    dtype_name,
    is_local_path,
    load_affect_model,
    weights_sha256,
)
from .analysis import AlignedFaces, FaceAffectAnalyzer, StageSeconds
from .corpus import CorpusProgress, Launch, check_corpus_output, plan_corpus
from .media import (
    BATCH_PIXELS,
    DatasetRow,
    Frame,
    MediaInput,
    MediaReport,
    expand_inputs,
    frame_pixels,
    input_size,
    prefetched_frames,
)
from .results import FaceResult, frame_rows, table_schema
from .smoothing import ExponentialSmoother
from .table import TableWriter, check_output, check_table_path, clear_table_folder, read_table, shard_records
from .temporal import Batch, TemporalTracks
from .tracking import FaceTracker


logger = logging.getLogger(__name__)


class FaceIdentities:
    """One tracker (and smoother) per video: a face keeps its id from frame to frame. Still pictures keep the
    analyzer's ids (their faces' ranks)."""

    def __init__(self, max_gap: float, smoothing: float, config: Any):
        self.max_gap, self.smoothing, self.config = max_gap, smoothing, config
        self.source: str | None = None

    def assign(self, frame: Frame, faces: list[FaceResult]) -> list[FaceResult]:
        if frame.time is None:
            return faces
        if frame.source != self.source:
            self.source, self.tracker = frame.source, FaceTracker(max_gap=self.max_gap)
            self.smoother = ExponentialSmoother(self.smoothing, self.config) if self.smoothing else None
        boxes = torch.tensor([face.box for face in faces], dtype=torch.float32).reshape(-1, 4)
        features = torch.stack([face.features for face in faces]) if faces and all(
            face.features is not None for face in faces
        ) else None  # fmt: skip
        ids = self.tracker.update(boxes, frame.time, features)
        faces = [replace(face, face_id=face_id) for face, face_id in zip(faces, ids, strict=True)]
        if self.smoother is not None:
            faces = [self.smoother.update(face, frame.time) for face in faces]
            self.smoother.forget(set(self.tracker.boxes))
        return faces


class AnalysisRun:
    """One pass over the inputs: iterate it for batches of (frame, its faces), in the inputs' order.

    The inputs are expanded and the model loaded (and checked to be an affect model) before any file is read.
    `model` is a folder, a Hub id or a `FaceAffectAnalyzer` (`affect_hf.pipeline(...)`), whose own device, backend
    and detector options then apply. What the reader met is in `report`; the counts grow as the batches come.
    With a `temporal` model, a batch holds the frames that model has answered (`inference.temporal`): with a
    bidirectional one, fewer than were read or none, until the faces' tracks end; `keep_images` keeps the pictures
    of the frames it holds (the overlay draws them).
    """

    def __init__(
        self,
        inputs: MediaInput | Sequence[MediaInput],
        model: str | os.PathLike | FaceAffectAnalyzer,
        batch_size: int = 16,
        device: str = "auto",
        every_n_frames: int = 1,
        max_faces: int | None = None,
        min_face_score: float | None = None,
        detector: str = "auto",
        smoothing: float = 0.0,
        max_gap: float = 2.0,
        max_seconds: float | None = None,
        backend: str = "torch",
        dtype: str = "auto",
        max_pixels: int = MAX_PIXELS,
        progress: bool = False,
        exclude: tuple[str | os.PathLike, ...] = (),
        overlap: bool | None = None,
        temporal: "str | os.PathLike | torch.nn.Module | None" = None,
        max_track_seconds: float = 60.0,
        keep_frame_outputs: bool = False,
        strict: bool = False,
        keep_images: bool = False,
    ):
        for name, value, least in (("every_n_frames", every_n_frames, 1), ("batch_size", batch_size, 1),
                                   ("max_pixels", max_pixels, 1)):  # fmt: skip
            if value < least:
                raise ValueError(f"{name} must be at least {least}, got {value}")
        for name, value in (("smoothing", smoothing), ("max_gap", max_gap)):
            if value < 0:
                raise ValueError(f"{name} must not be negative, got {value}")
        if max_seconds is not None and max_seconds <= 0:
            raise ValueError(f"max_seconds must be positive, got {max_seconds}")
        if temporal is not None and smoothing:
            raise ValueError("smoothing and a temporal model both model time: use one of them (smoothing 0)")
        if keep_frame_outputs and temporal is None:
            raise ValueError("keep_frame_outputs keeps the frame model's answers beside a temporal model's: give one")
        self.items = expand_inputs(inputs, exclude)
        self.start = 0  # the first input to read (a resumed run skips the finished ones)
        self.options = {"every_n_frames": every_n_frames, "max_faces": max_faces, "min_face_score": min_face_score,
                        "smoothing": smoothing, "max_gap": max_gap, "max_seconds": max_seconds,
                        "max_pixels": max_pixels}  # fmt: skip
        if isinstance(model, FaceAffectAnalyzer):
            self.analyzer = model
        else:
            self.analyzer = FaceAffectAnalyzer.from_pretrained(
                model, device=device, batch_size=batch_size, min_face_score=min_face_score, max_faces=max_faces,
                backend=backend, detector=detector, dtype=dtype,
            )  # fmt: skip
        self.batch_size, self.every_n_frames, self.max_seconds = batch_size, every_n_frames, max_seconds
        self.max_pixels, self.progress = max_pixels, progress
        # The next batch's detection in a second thread while the model runs this one: on a GPU the two overlap; on
        # a CPU they would share the same cores (None: on for CUDA devices).
        self.overlap = self.analyzer.device.type == "cuda" if overlap is None else overlap
        self.identities = FaceIdentities(max_gap, smoothing, self.analyzer.config)
        self.temporal, self.temporal_source = None, None
        if temporal is not None:
            self.temporal_source, model = load_temporal_model(temporal, self.analyzer, strict)
            self.temporal = TemporalTracks(model, max_track_seconds, max_gap, keep_frame_outputs, keep_images)
            if not model.config.causal:  # where rows are held (cut tracks change no answer, but it is the run's)
                self.options["max_track_seconds"] = max_track_seconds
        self.schema = table_schema(self.analyzer.config, self.analyzer.landmark_names, keep_frame_outputs)
        self.report = MediaReport()
        self.frames = self.faces = self.frames_without_face = 0
        self.stage_seconds = StageSeconds()

    def __iter__(self) -> Iterator[Batch]:
        if self.temporal is None:
            yield from self._analysed_batches()
            return
        for batch in self._analysed_batches():  # a bidirectional model holds each face's frames until its track ends
            with self.stage_seconds.timed("temporal"):
                released = self.temporal.add(batch)
            yield released
        with self.stage_seconds.timed("temporal"):
            released = self.temporal.finish()
        yield released

    def _analysed_batches(self) -> Iterator[Batch]:
        frames = prefetched_frames(
            self.items[self.start :], self.every_n_frames, self.report, 2 * self.batch_size, self.max_seconds,
            self.max_pixels, first_item=self.start,
        )  # fmt: skip
        bar = tqdm(unit="frame", desc="analyse", disable=not self.progress, dynamic_ncols=True)
        try:
            batches = self._batches(frames)
            if not self.overlap:
                for batch in batches:
                    yield self._analysed(batch, self._found(batch), bar)
                return
            stream = torch.cuda.Stream(self.analyzer.device) if self.analyzer.device.type == "cuda" else None
            # The thread's own current GPU is the model's, so that it opens no CUDA context on another one.
            on_gpu = {"initializer": torch.cuda.set_device, "initargs": (self.analyzer.device,)} if stream else {}
            with ThreadPoolExecutor(1, thread_name_prefix="affect-hf-faces", **on_gpu) as finder:
                pending = None  # at most two batches in flight: this one at the model, the next at the detector
                for batch in batches:
                    found = finder.submit(self._found, batch, stream)
                    if pending is not None:
                        yield self._analysed(pending[0], pending[1].result(), bar)
                    pending = (batch, found)
                if pending is not None:
                    yield self._analysed(pending[0], pending[1].result(), bar)
        finally:
            bar.close()
            frames.close()

    def _batches(self, frames: Iterator[Frame]) -> Iterator[list[Frame]]:
        """`batch_size` frames at a time, or fewer large pictures (`BATCH_PIXELS`; one larger goes alone)."""
        batch: list[Frame] = []
        for frame in self._waited(frames):
            if batch and (frame is None or sum(map(frame_pixels, [*batch, frame])) > BATCH_PIXELS):
                yield batch
                batch = []
            if frame is not None:
                batch.append(frame)
                if len(batch) == self.batch_size:
                    yield batch
                    batch = []

    def _waited(self, frames: Iterator[Frame]) -> Iterator[Frame | None]:
        """The frames, then None (the signal to run the last, short batch); the time spent waiting for each is the
        reader's share of the run ("decode_wait": decoding that the reader's thread did not hide)."""
        while True:
            with self.stage_seconds.timed("decode_wait"):
                frame = next(frames, None)
            yield frame
            if frame is None:
                return

    def _found(self, batch: list[Frame], stream: "torch.cuda.Stream | None" = None) -> AlignedFaces:
        return self.analyzer.find_faces([item.image for item in batch], [item.time is not None for item in batch],
                                        self.stage_seconds, stream)  # fmt: skip

    def _analysed(self, batch: list[Frame], found: AlignedFaces, bar: tqdm) -> Batch:
        results = self.analyzer.describe_faces(found, self.stage_seconds)
        with self.stage_seconds.timed("track"):
            analysed = [(item, self.identities.assign(item, faces))
                        for item, faces in zip(batch, results, strict=True)]  # fmt: skip
        self.frames += len(batch)
        self.faces += sum(len(faces) for _, faces in analysed)
        self.frames_without_face += sum(not faces for _, faces in analysed)
        bar.update(len(batch))
        bar.set_postfix(faces=self.faces)
        return analysed

    def fingerprint(self) -> dict[str, Any]:
        """What names this run for a resume: the inputs (path, size, modification time), the model, the options
        and the columns. Batch size and device may change: they change no row beyond rounding; the model's dtype
        changes more, and is part of it."""
        listed = [[str(item), *_identity(item)] for item in self.items]
        analyzer, detector = self.analyzer, self.analyzer.detector
        return {
            "inputs": _digest(listed),
            "num_inputs": len(self.items),
            "model": analyzer.source,
            "model_version": model_version(analyzer),
            "backend": analyzer.backend,
            "detector": [type(detector).__name__, getattr(detector, "min_score", None),
                         getattr(detector, "max_faces", None)],
            **{name: value for name, value in self.options.items() if name not in ("min_face_score", "max_faces")},
            "columns": _digest(self.schema.names),
            # The temporal model, where one runs (tables written before it existed resume).
            **({} if self.temporal is None else self._temporal_fingerprint()),
            # The model's dtype, where not fp32 (tables written before `--dtype` existed are fp32 and resume).
            **({} if analyzer.model.dtype == torch.float32 else {"dtype": dtype_name(analyzer.model.dtype)}),
        }  # fmt: skip

    def _temporal_fingerprint(self) -> dict[str, Any]:
        """The temporal model: its name, its weights, and its config (what changes its answers with the same
        weights: causal, window, frame rate, thresholds ...), less the frame model's name, which `model` covers."""
        model = self.temporal.model
        settings = {name: value for name, value in model.config.to_dict().items()
                    if not name.startswith("_") and name not in ("transformers_version", "frame_model")}  # fmt: skip
        version = _weights_digest(model) if self.temporal_source is None else _version(self.temporal_source, model)
        return {"temporal": self.temporal_source, "temporal_version": version, "temporal_settings": _digest(settings)}

    @staticmethod
    def rows(batch: Batch) -> list[dict[str, Any]]:
        """The table rows of a batch: per frame, one per face or one with an empty `face_id`."""
        return [row for frame, faces in batch for row in frame_rows(frame.source, frame.index, frame.time, faces)]

    def dataframe(self, rows: list[dict[str, Any]]):
        """Rows as a pandas DataFrame with the table's columns and types (as `pandas.read_parquet` gives them)."""
        return pa.Table.from_pylist(rows, schema=self.schema).to_pandas()


def iter_analyze(inputs: MediaInput | Sequence[MediaInput], model: str | os.PathLike | FaceAffectAnalyzer,
                 **options: Any):  # fmt: skip
    """`analyze`, one DataFrame per batch of frames: memory stays flat however long the videos.

    Options are `analyze`'s. The batches together are `analyze`'s table.
    """
    run = AnalysisRun(inputs, model, **options)
    for batch in run:
        if batch:  # a bidirectional temporal model may hold a batch's frames for later
            yield run.dataframe(run.rows(batch))


def analyze(inputs: MediaInput | Sequence[MediaInput], model: str | os.PathLike | FaceAffectAnalyzer, **options: Any):
    """Every face of every frame of `inputs` as a pandas DataFrame: the rows and columns `affect-hf predict` writes.

    `inputs`: a path (picture, video or folder), a PIL image, an H x W x 3 uint8 array, or a list of them (pictures in
    memory are named `<image N>` in `source`). `model`: a folder, a Hub id, or `affect_hf.pipeline(...)`'s analyzer
    (loaded once, reused). Options: `batch_size` (16), `device` ("auto"), `backend` ("torch", "onnx",
    "onnx-int8"), `dtype` ("auto": bf16 where the device computes it natively, fp16 on older GPUs, else fp32; or
    "fp32", "bf16", "fp16"), `detector` ("auto": MTCNN for pictures, BlazeFace for video frames; "mtcnn", "blazeface"),
    `every_n_frames`, `max_faces`, `min_face_score` (None: the detector's), `smoothing` (seconds, 0: off),
    `max_gap` (seconds a lost face keeps its id), `max_seconds` (of each video), `max_pixels` (the picture limit),
    `overlap` (find the next batch's faces in a second thread while the model runs; None: on CUDA devices),
    `progress`; `temporal` (a `--recipe temporal` folder, Hub id or loaded model, over each tracked face's frames
    with `model` as its frame model: `inference.temporal`), `max_track_seconds` (60: a bidirectional temporal model
    holds a face's rows up to this long, to the next window boundary, then cuts its track: no answer changes),
    `keep_frame_outputs` (the frame model's answers
    too, in `frame_` columns), `strict` (refuse a frame model whose weights are not the temporal model's). Files
    that cannot be read are skipped with a warning and listed in `table.attrs["skipped"]`; when nothing at all can
    be read, a `ValueError` names each input and why.
    """
    run = AnalysisRun(inputs, model, **options)
    rows = [row for batch in run for row in run.rows(batch)]
    if not run.frames:
        reasons = "; ".join(f"{path}: {reason}" for path, reason in run.report.skipped)
        raise ValueError(f"nothing could be read from the inputs ({reasons or 'no frame'})")
    table = run.dataframe(rows)
    table.attrs["skipped"] = list(run.report.skipped)
    return table


def model_version(analyzer: FaceAffectAnalyzer) -> str | None:
    """What names the weights a run used: an ONNX file's sha256, a local folder's weights' sha256, or the Hub
    revision a model was downloaded at."""
    model = analyzer.model
    if getattr(model, "record", None) is not None:  # an ONNX export
        return model.record["files"][model.file_name]
    return _version(analyzer.source, model)


def _version(source: str | None, model: Any) -> str | None:
    if source and is_local_path(source):
        return weights_sha256(source)
    return getattr(model.config, "_commit_hash", None)


def _weights_digest(model: torch.nn.Module) -> str:
    """The sha256 of a model's tensors, by name: what names a temporal model made in memory."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_temporal_model(
    temporal: "str | os.PathLike | torch.nn.Module", analyzer: FaceAffectAnalyzer, strict: bool = False
) -> tuple[str | None, torch.nn.Module]:
    """(its name, the model) of a temporal folder, Hub id or loaded model (moved), on the analyzer's device in fp32,
    checked against the analyzer's frame model (`models.check_frame_model`: refused by width or labels, by weights
    with `strict`)."""
    if isinstance(temporal, torch.nn.Module):
        name = getattr(temporal, "name_or_path", None) or None
        model = temporal.eval().to(analyzer.device, torch.float32)
    else:
        name, model = str(temporal), load_affect_model(temporal, device=analyzer.device, dtype="fp32")
    if model.config.model_type != TEMPORAL_MODEL_TYPE:
        raise ValueError(f"{name} holds a {model.config.model_type} model, not a temporal one (`--recipe temporal`)")
    check_frame_model(model.config, analyzer.config, analyzer.source or "the frame model", strict)
    return name, model


def _identity(item) -> list:
    """A file's size and modification time (a changed file is another input), a dataset row's dataset fingerprint;
    nothing for a picture in memory."""
    if isinstance(item, Path):
        status = item.stat()
        return [status.st_size, status.st_mtime_ns]
    if isinstance(item, DatasetRow):
        return [item.dataset._fingerprint]
    return []


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()


@dataclass
class PredictionSummary:
    output: Path
    inputs: int = 0
    resumed_inputs: int = 0  # inputs a resumed run found finished
    rows: int = 0
    frames: int = 0
    faces: int = 0
    frames_without_face: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    media: MediaReport = field(default_factory=MediaReport)
    plots: list[Path] = field(default_factory=list)
    processes: int = 1  # of the launch; the first process's summary covers all of them
    is_main_process: bool = True
    # Seconds per stage (`StageSeconds`), summed over the processes of a launch, and those processes' own seconds.
    stage_seconds: dict[str, float] = field(default_factory=dict)
    process_seconds: float = 0.0

    def stage_shares(self) -> dict[str, float]:
        """Each stage's part of the processes' time. Without overlap the stages follow one another and what is left
        is the bar and bookkeeping; with it (on CUDA) detect and align run beside the model, and the shares can
        add up to more than 1."""
        total = self.process_seconds or self.seconds
        return {stage: seconds / total for stage, seconds in self.stage_seconds.items()} if total else {}

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def predict(
    paths: MediaInput | Sequence[MediaInput],
    model: str | os.PathLike | FaceAffectAnalyzer,
    output: str | os.PathLike,
    plots_dir: str | os.PathLike | None = None,
    overlay: str | os.PathLike | None = None,
    progress: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    rows_per_part: int = 8192,
    flush_seconds: float = 10.0,
    **options: Any,
) -> PredictionSummary:
    """Analyse every face of every frame of `paths` into the table `output` (FILE.csv, or a Parquet folder).

    Options are `analyze`'s. The output is written as the rows come (`table.TableWriter`: readable after a kill,
    one writer at a time); an existing output is refused unless `resume` (continue it: finished inputs are kept,
    an unfinished one is redone) or `overwrite`. Returns what was done (`summary.interrupted` after Ctrl-C). This
    run's own outputs are never read back as inputs. `plots_dir` gets `affect_hf.plots.save_plots` of the whole
    table; `overlay` the first video with the faces drawn (kept as it is when a resumed run finds it written).

    Under a launch of several processes (`accelerate launch -m affect_hf predict`), or to resume a folder such a
    launch wrote, the files are shared out among the processes (`inference.corpus`); the first process's summary
    covers them all.
    """
    check_table_path(output)
    launch = Launch.current(options.get("device", "auto"))
    if launch.processes > 1 or any(shard is not None for shard in shard_records(output)):
        return _predict_corpus(paths, model, output, launch, plots_dir, overlay, progress, resume, overwrite,
                               rows_per_part, flush_seconds, **options)  # fmt: skip
    locks: list[OutputLock] = []
    try:
        for path in (output, overlay):  # refused at once, before the model is loaded
            if path is not None:
                locks.append(OutputLock(path).acquire())
        check_output(output, resume, overwrite)
        own_outputs = (output, *(path for path in (plots_dir, overlay) if path is not None))
        run = AnalysisRun(paths, model, progress=progress, exclude=own_outputs, keep_images=overlay is not None,
                          **options)  # fmt: skip
        writer = TableWriter(output, run.schema, run.fingerprint(), resume=resume, overwrite=overwrite,
                             rows_per_part=rows_per_part, flush_seconds=flush_seconds, lock=locks[0])  # fmt: skip
        kept_overlay = overlay is not None and resume and Path(overlay).is_file()
        return _write_table(run, writer, plots_dir, None if kept_overlay else overlay)
    finally:
        for lock in locks:
            lock.release()


def _predict_corpus(
    paths,
    model,
    output,
    launch: Launch,
    plots_dir,
    overlay,
    progress: bool,
    resume: bool,
    overwrite: bool,
    rows_per_part: int,
    flush_seconds: float,
    **options,
) -> PredictionSummary:
    """`predict` as one process of a launch: the first process locks and checks the output, then hands out the plan
    (`corpus.plan_corpus`); each process writes its shard; the first waits for every shard and sums them up."""
    check_corpus_output(output, launch.processes)
    if overlay is not None and launch.processes > 1:
        raise ValueError("--overlay draws the first video of a run: run it in one process")
    output = Path(output)
    lock = None
    try:
        refusal = None
        if launch.is_main:
            try:
                lock = OutputLock(output).acquire()
                check_output(output, resume, overwrite)
            except (OSError, ValueError) as error:
                refusal = error
        refusal = launch.broadcast(refusal)
        if refusal is not None:
            raise refusal
        own_outputs = (output, *(path for path in (plots_dir, overlay) if path is not None))
        run = AnalysisRun(paths, model, progress=False, exclude=own_outputs, keep_images=overlay is not None,
                          **{**options, "device": launch.device})  # fmt: skip
        fingerprint = run.fingerprint()
        # Every process must see the same inputs, model and options as the first: the plan names inputs by position.
        differing = sorted({key for other in launch.gather(fingerprint) for key in {*other, *fingerprint}
                            if other.get(key) != fingerprint.get(key)})  # fmt: skip
        if differing:
            raise ValueError(
                f"the processes of this launch do not see the same run ({', '.join(differing)} differ between them): "
                "give every process the same inputs (a shared filesystem), model and options"
            )
        plan = None
        if launch.is_main:
            try:
                if overwrite and output.is_dir():
                    clear_table_folder(output)
                sizes = [input_size(item) for item in run.items]
                plan = plan_corpus(output, run.schema, fingerprint, sizes, launch.processes, resume)
            except (OSError, ValueError) as error:
                plan = error
        plan = launch.broadcast(plan)
        if isinstance(plan, BaseException):
            raise plan
        summary = PredictionSummary(output, inputs=len(run.items), resumed_inputs=plan.finished, media=run.report,
                                    processes=launch.processes, is_main_process=launch.is_main)  # fmt: skip
        shards = CorpusProgress(output, [plan.shard(rank) for rank, given in enumerate(plan.inputs) if given])
        bar = tqdm(total=sum(map(len, plan.inputs)), unit="file", desc="analyse", dynamic_ncols=True,
                   disable=not (progress and launch.is_main))  # fmt: skip
        mine = plan.inputs[launch.rank]
        if mine:
            run.items = [run.items[position] for position in mine]
            writer = TableWriter(output, run.schema, fingerprint, rows_per_part=rows_per_part,
                                 flush_seconds=flush_seconds, lock=lock or False, shard=plan.shard(launch.rank),
                                 inputs=mine)  # fmt: skip
            polled = [0.0]

            def show_progress() -> None:  # the corpus totals, read from the folder every second or so
                if launch.is_main and clock.monotonic() - polled[0] > 1.0:
                    polled[0] = clock.monotonic()
                    bar.update(sum(record["inputs_done"] for record in shards.records().values()) - bar.n)

            own = _write_table(run, writer, None, None, on_batch=show_progress)
            summary.interrupted = own.interrupted
        if not launch.is_main:
            bar.close()
            return summary
        started = clock.perf_counter()
        stats = None
        if not summary.interrupted:
            try:
                stats = shards.wait(lambda done: bar.update(done - bar.n))
            except KeyboardInterrupt:
                summary.interrupted = True
        if stats is None:  # interrupted: what every shard has recorded so far
            stats = [record.get("stats", {}) for record in shards.records().values()]
        bar.close()
        summary.seconds = clock.perf_counter() - started + (own.seconds if mine else 0.0)
        _sum_shards(summary, stats)
        if not summary.frames and not plan.finished and not summary.interrupted:
            clear_table_folder(output)
            if not any(output.iterdir()):
                output.rmdir()
            reasons = "; ".join(f"{path}: {reason}" for path, reason in summary.media.skipped)
            raise ValueError(f"nothing could be read from the inputs ({reasons or 'no frame'}); no table was written")
        if plots_dir is not None and not summary.interrupted:
            from ..plots import save_plots

            summary.plots = save_plots(read_table(output), plots_dir)
        return summary
    finally:
        if lock is not None:
            lock.release()


def _sum_shards(summary: PredictionSummary, stats: list[dict[str, Any]]) -> None:
    """The launch's totals, from what each shard recorded."""
    media = MediaReport()
    for shard in stats:
        summary.rows += shard.get("rows", 0)
        summary.frames += shard.get("frames", 0)
        summary.faces += shard.get("faces", 0)
        summary.frames_without_face += shard.get("frames_without_face", 0)
        summary.interrupted |= bool(shard.get("interrupted"))
        media.images += shard.get("images", 0)
        media.videos += shard.get("videos", 0)
        media.skipped += [tuple(entry) for entry in shard.get("skipped", [])]
        media.corrupt_packets.update(shard.get("corrupt_packets", {}))
        media.cut_at_seconds.update(shard.get("cut_at_seconds", {}))
        media.cut_short.update({path: tuple(times) for path, times in shard.get("cut_short", {}).items()})
        summary.process_seconds += shard.get("seconds", 0.0)
        for stage, seconds in shard.get("stage_seconds", {}).items():
            summary.stage_seconds[stage] = summary.stage_seconds.get(stage, 0.0) + seconds
    summary.media = media


def _write_table(run: "AnalysisRun", writer: TableWriter, plots_dir, overlay, on_batch=None) -> PredictionSummary:
    """The run's rows into the writer, input after input, batch by batch; the overlay and the plots. A shard of a
    launch records what it counted, and is kept also when it read nothing (the first process waits for it)."""
    run.start = writer.inputs_done
    summary = PredictionSummary(writer.path, inputs=len(run.items), resumed_inputs=run.start, media=run.report)
    if run.start:
        logger.info("resuming %s: %d of %d inputs were finished", writer.path, run.start, len(run.items))
    overlay_writer = None
    if overlay is not None:
        from .overlay import OverlayWriter

        overlay_writer = OverlayWriter(overlay)
    started, finished = clock.perf_counter(), run.start
    complete = failing = False
    try:
        for batch in run:
            for frame, faces in batch:
                if frame.item > finished:  # every earlier input has all its rows
                    writer.finish_inputs(frame.item)
                    finished = frame.item
                with run.stage_seconds.timed("write"):
                    rows = frame_rows(frame.source, frame.index, frame.time, faces)
                    writer.write(rows)
                summary.rows += len(rows)
                if overlay_writer is not None:
                    overlay_writer.add(frame, faces, run.report.video_rates.get(frame.source), run.every_n_frames)
            with run.stage_seconds.timed("write"):
                writer.flush()
            if on_batch is not None:
                on_batch()
        writer.finish_inputs(len(run.items))
        complete = True
    except KeyboardInterrupt:
        summary.interrupted = True
        logger.warning("interrupted: keeping the %d rows written so far", summary.rows)
    except BaseException:
        failing = True
        raise
    finally:
        summary.seconds = clock.perf_counter() - started
        summary.frames, summary.faces, summary.frames_without_face = run.frames, run.faces, run.frames_without_face
        summary.stage_seconds, summary.process_seconds = dict(run.stage_seconds), summary.seconds
        report = run.report  # recorded with the table: a launch's first process sums its shards' stats
        writer.stats = {
            "rows": summary.rows, "frames": run.frames, "faces": run.faces,
            "frames_without_face": run.frames_without_face, "images": report.images, "videos": report.videos,
            "skipped": report.skipped, "interrupted": summary.interrupted,
            "corrupt_packets": report.corrupt_packets, "cut_at_seconds": report.cut_at_seconds,
            "cut_short": report.cut_short, "seconds": summary.seconds, "stage_seconds": summary.stage_seconds,
            "failed": failing,
        }  # fmt: skip
        try:
            try:  # the rows first: whatever happens next, they are on disk
                if run.frames or writer.rows or writer.shard is not None:
                    writer.close(complete=complete)
                else:  # nothing was read: no table is left behind
                    writer.discard()
            finally:
                if overlay_writer is not None:
                    overlay_writer.close(video_ended=complete)
        except Exception as error:
            if not failing:
                raise
            # The error that stopped the run is the one to report (a full disk fails these writes too).
            logger.warning("%s could not be closed cleanly: %s", writer.path, error)
    if plots_dir is not None and writer.rows:
        from ..plots import save_plots

        summary.plots = save_plots(read_table(summary.output), plots_dir)
    return summary


__all__ = ["AnalysisRun", "FaceIdentities", "PredictionSummary", "analyze", "iter_analyze", "predict"]
