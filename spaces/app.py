"""A Hugging Face Space for an affect-hf model: copy this file and requirements.txt into a new Gradio Space and
set the Space variable AFFECT_MODEL to the model's Hub id (or edit the default below), and AFFECT_TEMPORAL to a
temporal model trained on it (`--recipe temporal`) to answer videos over each face's frames.

The Hub's hosted widget cannot run a model's custom code; this Space runs the `affect-hf app` page instead: faces
found and aligned in an uploaded image or webcam snapshot, each with its valence/arousal on the circumplex, its
expression probabilities and its action units; for a short video, the plots over time and the CSV table.
"""

import os

import affect_hf
from affect_hf.app import build_app
from affect_hf.inference.predict import load_temporal_model


MODEL = os.environ.get("AFFECT_MODEL", "your-name/your-emma-model")
TEMPORAL = os.environ.get("AFFECT_TEMPORAL") or None
MAX_VIDEO_SECONDS = float(os.environ.get("AFFECT_MAX_VIDEO_SECONDS", "20"))

analyzer = affect_hf.pipeline(MODEL, device="auto")
temporal = None if TEMPORAL is None else load_temporal_model(TEMPORAL, analyzer)[1]
demo = build_app(analyzer, max_video_seconds=MAX_VIDEO_SECONDS, title=f"affect-hf: {MODEL}", temporal=temporal)

if __name__ == "__main__":
    demo.launch()
