"""`affect-hf app`: a Gradio page to look at an affect model's answers (needs `pip install affect-hf[app]`).

An image (uploaded or a webcam snapshot): the faces boxed and labelled, and per face its valence/arousal point on
the circumplex, its expression probabilities and its AU probabilities with the decisions. A short video: the
plots of `affect-hf predict --plots` and the table as a CSV to download, through a temporal model over each face's
frames where the page has one (`--temporal`; pictures stay frame level); a video longer than `max_video_seconds`
is cut there, with a notice. Anything else is refused with a message on the page. `spaces/app.py` runs the same
page as a Hugging Face Space.
"""

import json
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from .inference.analysis import FaceAffectAnalyzer
from .inference.media import is_video, read_still_image
from .inference.overlay import draw_faces
from .inference.predict import load_temporal_model, predict
from .inference.results import frame_rows
from .plots import faces_figure


def analyse_image(analyzer: FaceAffectAnalyzer, image: np.ndarray) -> tuple[PIL.Image.Image, list[dict], Any]:
    """The annotated picture, one table row per face (the `affect-hf predict` schema) and the figure."""
    import pandas as pd

    pixels = np.ascontiguousarray(image[..., :3])
    [faces] = analyzer.analyze_images([torch.from_numpy(pixels).permute(2, 0, 1)], video=[False])
    rows = frame_rows("<image 0>", 0, None, faces) if faces else []
    annotated = draw_faces(PIL.Image.fromarray(pixels), faces)
    return annotated, rows, faces_figure(pd.DataFrame(rows, columns=["face_id"] if not rows else None))


def analyse_video(
    analyzer: FaceAffectAnalyzer, path: str, max_seconds: float, folder: Path, temporal: torch.nn.Module | None = None
) -> tuple[Path, list[Path], str]:
    """The table (CSV), the plots and a notice (how much was analysed, and whether the video was cut); `temporal`:
    a temporal model over each face's frames (`inference.temporal`)."""
    output = folder / f"{Path(path).stem}_affect.csv"
    summary = predict([path], analyzer, output, progress=False, plots_dir=folder / "plots", max_seconds=max_seconds,
                      temporal=temporal)  # fmt: skip
    notice = f"{summary.frames} frames, {summary.faces} faces, {summary.frames_without_face} frames without a face."
    if summary.media.cut_at_seconds:
        notice += f" The video was cut at {max_seconds:g} s (the limit of this page)."
    return output, summary.plots, notice


def build_app(
    analyzer: FaceAffectAnalyzer, max_video_seconds: float = 30.0, title: str = "affect-hf",
    temporal: torch.nn.Module | None = None,
):  # fmt: skip
    """The Gradio Blocks page over one analyzer (and for videos, a temporal model over its outputs)."""
    import gradio as gr

    work = Path(tempfile.mkdtemp(prefix="affect-hf-app-"))

    def refusals(handler):
        """Every refusal on the page, as one line: a file that is no picture or video, a picture beyond the pixel
        limit, a broken file (never Gradio's generic error)."""

        def answer(*inputs):
            try:
                return handler(*inputs)
            except gr.Error:
                raise
            except (OSError, ValueError, ImportError) as error:
                raise gr.Error(" ".join(str(error).split()) or type(error).__name__) from None

        return answer

    def picture(path: str):
        """An uploaded picture read as `affect-hf predict` reads one (upright, 8-bit, within the pixel limit)."""
        try:
            image = read_still_image(Path(path))
        except OSError as error:
            raise gr.Error(f"{Path(path).name} cannot be read: {str(error).removeprefix(f'{path}: ')}") from None
        return image

    @refusals
    def on_image(image):  # decoded by Gradio (the file tab reads files itself)
        if image is None:
            raise gr.Error("Upload an image or take a webcam snapshot first.")
        annotated, rows, figure = analyse_image(analyzer, image)
        return annotated, figure, json.dumps(rows, indent=1), f"{len(rows)} face(s) found."

    @refusals
    def on_file(path):
        if path is None:
            raise gr.Error("Choose an image or a video file first.")
        image = picture(path)
        if image is not None:
            annotated, rows, figure = analyse_image(analyzer, image.permute(1, 2, 0).numpy())
            return annotated, figure, json.dumps(rows, indent=1), f"{len(rows)} face(s) found.", None, []
        try:
            reason = is_video(Path(path))
        except ImportError:
            reason = "videos need PyAV (pip install affect-hf[video])"
        if reason is not None:
            raise gr.Error(f"{Path(path).name} is neither an image nor a video this page can read ({reason}).")
        folder = Path(tempfile.mkdtemp(dir=work))
        table, plots, notice = analyse_video(analyzer, path, max_video_seconds, folder, temporal)
        return None, None, "", notice, str(table), [str(p) for p in plots]

    with gr.Blocks(title=title) as page:
        config = analyzer.config
        answers = [
            f"{len(config.id2label)} expressions ({', '.join(config.id2label[i] for i in range(len(config.id2label)))})"
        ]
        if hasattr(config, "au_names"):
            answers = ["valence/arousal", *answers, f"{len(config.au_names)} action units"]
        over_time = (
            f" In videos, a {'causal' if temporal.config.causal else 'bidirectional'} temporal model answers over each "
            "face's frames." if temporal is not None else ""
        )  # fmt: skip
        gr.Markdown(
            f"# {title}\n{', '.join(answers)} for every face. Faces are found (MTCNN in pictures, BlazeFace in videos) "
            f"and aligned like ABAW's crops.{over_time}"
        )
        with gr.Tab("Image or webcam"):
            with gr.Row():
                image_in = gr.Image(sources=["upload", "webcam", "clipboard"], type="numpy", label="Image",
                                    elem_id="image-input")  # fmt: skip
                image_out = gr.Image(label="Faces", elem_id="faces-image")
            image_button = gr.Button("Analyse image", elem_id="analyse-image", variant="primary")
        with gr.Tab("File (image or short video)"):
            file_in = gr.File(label=f"Image or video (videos cut at {max_video_seconds:g} s)", elem_id="file-input")
            file_button = gr.Button("Analyse file", elem_id="analyse-file", variant="primary")
            table_out = gr.File(label="Table (CSV, one row per frame x face)", elem_id="table-file")
            plots_out = gr.Gallery(label="Plots", elem_id="plots", columns=2)
        notice = gr.Markdown(elem_id="notice")
        figure_out = gr.Plot(label="Per face", elem_id="face-figure")
        rows_out = gr.Textbox(label="Results (JSON, the predict table's columns)", lines=8, elem_id="results-json")
        image_button.click(on_image, image_in, [image_out, figure_out, rows_out, notice])
        file_button.click(on_file, file_in, [image_out, figure_out, rows_out, notice, table_out, plots_out])
    # The tables and plots it served go with the page (when it is closed or the process ends), not left in /tmp.
    page.work_folder = work
    weakref.finalize(page, shutil.rmtree, work, True)
    return page


def launch_app(
    model: str | os.PathLike, port: int | None = None, device: str = "auto", max_video_seconds: float = 30.0,
    share: bool = False, prevent_thread_lock: bool = False, temporal: str | os.PathLike | None = None,
    strict: bool = False, **options: Any,
):  # fmt: skip
    """Load the model (a folder or Hub id; `temporal`: a temporal model over it, for videos) and serve the page;
    returns what `gradio.Blocks.launch` returns."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    analyzer = FaceAffectAnalyzer.from_pretrained(model, device=device, **options)
    over_time = None if temporal is None else load_temporal_model(temporal, analyzer, strict)[1]
    page = build_app(analyzer, max_video_seconds, title=f"affect-hf: {Path(str(model)).name}", temporal=over_time)
    return page, page.launch(server_port=port, share=share, prevent_thread_lock=prevent_thread_lock, quiet=True)
