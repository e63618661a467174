"""`--plots`: per video, PNGs of what the table says over time (needs matplotlib: `pip install affect-hf[plots]`).

- `<video>_valence_arousal.png`: valence and arousal over time, one line per face;
- `<video>_circumplex.png`: each face's (valence, arousal) path on Russell's circumplex, coloured by time;
- `<video>_expressions.png`: each face's expression probabilities over time, stacked;
- `<video>_action_units.png`: each face's AU probabilities as a heatmap (AUs x time).
The per-face plots show the `MAX_FACES_PLOTTED` faces seen in the most frames.
Still pictures (no time) are drawn together on one circumplex, `pictures_circumplex.png`.
"""

import os
import re
from pathlib import Path
from typing import Any

from ..files import atomic_path
from .table import read_table


def plot_table(table: str | os.PathLike, output_dir: str | os.PathLike, config: Any) -> list[Path]:
    """Write the plots of a table written by `affect-hf predict`; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    rows = read_table(table)
    rows = rows[rows["face_id"].notna()]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    labels = [config.id2label[i] for i in range(len(config.id2label))]
    au_names = list(getattr(config, "au_names", ()))
    written = []
    videos = rows[rows["time"].notna()]
    stems: set[str] = set()
    for source, faces in videos.groupby("source", sort=False):
        stem = _safe_stem(source)
        while stem in stems:  # two videos of the same name in different folders
            stem += "_"
        stems.add(stem)
        faces = faces[faces["face_id"].isin(faces["face_id"].value_counts().index[:MAX_FACES_PLOTTED])]
        if "valence" in faces:
            written.append(_valence_arousal_over_time(faces, output_dir / f"{stem}_valence_arousal.png", source))
            written.append(_circumplex(faces, output_dir / f"{stem}_circumplex.png", source))
        written.append(_stacked_expressions(faces, labels, output_dir / f"{stem}_expressions.png", source))
        if au_names:
            written.append(_au_heatmap(faces, au_names, output_dir / f"{stem}_action_units.png", source))
    pictures = rows[rows["time"].isna()]
    if len(pictures) and "valence" in pictures:
        written.append(_circumplex(pictures, output_dir / "pictures_circumplex.png", "pictures"))
    return written


# A crowd gives hundreds of ids over a long video: the plots show the faces seen longest.
MAX_FACES_PLOTTED = 8


def _safe_stem(source: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source).name)


def _save(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as staging:
        figure.savefig(staging, dpi=110, bbox_inches="tight", format="png")
    plt.close(figure)
    return path


def _face_groups(faces):
    return list(faces.groupby("face_id", sort=True))


def _valence_arousal_over_time(faces, path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
    for face_id, face in _face_groups(faces):
        for axis, column in zip(axes, ("valence", "arousal"), strict=True):
            axis.plot(face["time"], face[column], label=f"face {int(face_id)}", linewidth=1.2)
    for axis, column in zip(axes, ("valence", "arousal"), strict=True):
        axis.set_ylabel(column)
        axis.set_ylim(-1.05, 1.05)
        axis.axhline(0, color="grey", linewidth=0.6)
        axis.grid(alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=8)
    axes[1].set_xlabel("time (s)")
    axes[0].set_title(f"Valence and arousal over time: {Path(title).name}")
    return _save(figure, path)


def _circumplex(faces, path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 5.5))
    axis.add_patch(plt.Circle((0, 0), 1, fill=False, color="grey", linewidth=0.8))
    axis.axhline(0, color="grey", linewidth=0.6)
    axis.axvline(0, color="grey", linewidth=0.6)
    for (x, y), word in {(0.75, 0.75): "excited", (-0.75, 0.75): "tense", (-0.75, -0.75): "sad",
                         (0.75, -0.75): "calm"}.items():  # fmt: skip
        axis.text(x, y, word, ha="center", va="center", color="grey", fontsize=9)
    if faces["time"].notna().any():
        scatter = axis.scatter(faces["valence"], faces["arousal"], c=faces["time"], s=10, cmap="viridis")
        figure.colorbar(scatter, ax=axis, label="time (s)", shrink=0.8)
    else:
        axis.scatter(faces["valence"], faces["arousal"], s=14)
    axis.set_xlim(-1.1, 1.1)
    axis.set_ylim(-1.1, 1.1)
    axis.set_aspect("equal")
    axis.set_xlabel("valence")
    axis.set_ylabel("arousal")
    axis.set_title(f"Circumplex: {Path(title).name}")
    return _save(figure, path)


def _stacked_expressions(faces, labels: list[str], path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    groups = _face_groups(faces)
    figure, axes = plt.subplots(len(groups), 1, figsize=(9, 2.2 * len(groups) + 0.6), sharex=True, squeeze=False)
    for axis, (face_id, face) in zip(axes[:, 0], groups, strict=True):
        axis.stackplot(face["time"], *[face[f"expression_{label}"] for label in labels], labels=labels)
        axis.set_ylim(0, 1)
        axis.set_ylabel(f"face {int(face_id)}")
    axes[0, 0].legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    axes[-1, 0].set_xlabel("time (s)")
    axes[0, 0].set_title(f"Expression probabilities: {Path(title).name}")
    return _save(figure, path)


def _au_heatmap(faces, au_names: list[str], path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    groups = _face_groups(faces)
    figure, axes = plt.subplots(len(groups), 1, figsize=(9, 2.6 * len(groups) + 0.6), squeeze=False)
    for axis, (face_id, face) in zip(axes[:, 0], groups, strict=True):
        values = face[[f"{name}_probability" for name in au_names]].to_numpy().T
        times = face["time"].to_numpy()
        end = times.max() if times.max() > times.min() else times.min() + 1
        image = axis.imshow(
            values, aspect="auto", cmap="magma", vmin=0, vmax=1, interpolation="nearest",
            extent=(times.min(), end, len(au_names) - 0.5, -0.5),
        )  # fmt: skip
        axis.set_yticks(range(len(au_names)), au_names, fontsize=7)
        axis.set_ylabel(f"face {int(face_id)}")
        figure.colorbar(image, ax=axis, label="probability")
    axes[-1, 0].set_xlabel("time (s)")
    axes[0, 0].set_title(f"Action units: {Path(title).name}")
    return _save(figure, path)
