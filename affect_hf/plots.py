"""Plots of an affect table (`affect_hf.analyze`'s DataFrame, or a table `affect-hf predict` wrote, read with
`affect_hf.inference.read_table`); they need matplotlib (`pip install affect-hf[plots]`).

Each `*_figure` function takes the rows of one video (or any selection of rows) and returns a matplotlib Figure:
- `valence_arousal_figure`: valence and arousal over time, one line per face;
- `circumplex_figure`: each face's (valence, arousal) path on Russell's circumplex, coloured by time;
- `expressions_figure`: each face's expression probabilities over time, stacked;
- `action_units_figure`: each face's AU probabilities as a heatmap (AUs x time);
- `faces_figure`: per face of one picture, its circumplex point and its expression and AU probabilities.
`save_plots(table, folder)` writes the first four per video as PNGs (what `affect-hf predict --plots` does), for
the `MAX_FACES_PLOTTED` faces seen in the most frames, and the still pictures together on one circumplex,
`pictures_circumplex.png`. The labels and AUs are read from the table's columns: no model is needed.
"""

import os
import re
from pathlib import Path

from .files import atomic_path


# A crowd gives hundreds of ids over a long video: the plots show the faces seen longest.
MAX_FACES_PLOTTED = 8


def expression_labels(table) -> list[str]:
    """The expression classes of a table, in its column order (`expression_<Label>`)."""
    return [column.removeprefix("expression_") for column in table.columns if column.startswith("expression_")]


def action_unit_names(table) -> list[str]:
    """The AUs of a table, in its column order (`<AU>_probability`)."""
    return [column.removesuffix("_probability") for column in table.columns if column.endswith("_probability")]


def save_plots(table, output_dir: str | os.PathLike) -> list[Path]:
    """Write the PNGs of a whole table (per video, and the pictures' circumplex); returns their paths."""
    rows = table[table["face_id"].notna()]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    has_va, has_aus = "valence" in rows, bool(action_unit_names(rows))
    written = []
    videos = rows[rows["time"].notna()]
    stems: set[str] = set()
    for source, faces in videos.groupby("source", sort=False):
        stem = _safe_stem(source)
        while stem in stems:  # two videos of the same name in different folders
            stem += "_"
        stems.add(stem)
        faces = faces[faces["face_id"].isin(faces["face_id"].value_counts().index[:MAX_FACES_PLOTTED])]
        title = Path(source).name
        if has_va:
            written.append(_save(valence_arousal_figure(faces, title), output_dir / f"{stem}_valence_arousal.png"))
            written.append(_save(circumplex_figure(faces, title), output_dir / f"{stem}_circumplex.png"))
        written.append(_save(expressions_figure(faces, title), output_dir / f"{stem}_expressions.png"))
        if has_aus:
            written.append(_save(action_units_figure(faces, title), output_dir / f"{stem}_action_units.png"))
    pictures = rows[rows["time"].isna()]
    if len(pictures) and has_va:
        written.append(_save(circumplex_figure(pictures, "pictures"), output_dir / "pictures_circumplex.png"))
    return written


def _safe_stem(source: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source).name)


def _save(figure, path: Path) -> Path:
    with atomic_path(path) as staging:
        figure.savefig(staging, dpi=110, bbox_inches="tight", format="png")
    return path


def _figure(**options):
    """A figure of its own, outside pyplot's registry: safe in threads (the app's), nothing to close, and shown
    in a notebook like any other."""
    from matplotlib.figure import Figure

    return Figure(**options)


def _unit_circle(axis) -> None:
    from matplotlib.patches import Circle

    axis.add_patch(Circle((0, 0), 1, fill=False, color="grey", linewidth=0.8))
    axis.axhline(0, color="grey", linewidth=0.6)
    axis.axvline(0, color="grey", linewidth=0.6)
    axis.set_xlim(-1.1, 1.1)
    axis.set_ylim(-1.1, 1.1)
    axis.set_aspect("equal")
    axis.set_xlabel("valence")
    axis.set_ylabel("arousal")


def _face_groups(faces):
    return list(faces.groupby("face_id", sort=True))


def valence_arousal_figure(faces, title: str = ""):
    """Valence and arousal over time, one line per face."""
    figure = _figure(figsize=(9, 5))
    axes = figure.subplots(2, 1, sharex=True)
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
    axes[0].set_title(f"Valence and arousal over time: {title}")
    return figure


def circumplex_figure(faces, title: str = ""):
    """Each face's (valence, arousal) on Russell's circumplex, coloured by time for a video."""
    figure = _figure(figsize=(5.5, 5.5))
    axis = figure.subplots()
    _unit_circle(axis)
    for (x, y), word in {(0.75, 0.75): "excited", (-0.75, 0.75): "tense", (-0.75, -0.75): "sad",
                         (0.75, -0.75): "calm"}.items():  # fmt: skip
        axis.text(x, y, word, ha="center", va="center", color="grey", fontsize=9)
    if faces["time"].notna().any():
        scatter = axis.scatter(faces["valence"], faces["arousal"], c=faces["time"], s=10, cmap="viridis")
        figure.colorbar(scatter, ax=axis, label="time (s)", shrink=0.8)
    else:
        axis.scatter(faces["valence"], faces["arousal"], s=14)
    axis.set_title(f"Circumplex: {title}")
    return figure


def expressions_figure(faces, title: str = ""):
    """Each face's expression probabilities over time, stacked."""
    labels = expression_labels(faces)
    groups = _face_groups(faces)
    figure = _figure(figsize=(9, 2.2 * len(groups) + 0.6))
    axes = figure.subplots(len(groups), 1, sharex=True, squeeze=False)
    for axis, (face_id, face) in zip(axes[:, 0], groups, strict=True):
        axis.stackplot(face["time"], *[face[f"expression_{label}"] for label in labels], labels=labels)
        axis.set_ylim(0, 1)
        axis.set_ylabel(f"face {int(face_id)}")
    axes[0, 0].legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    axes[-1, 0].set_xlabel("time (s)")
    axes[0, 0].set_title(f"Expression probabilities: {title}")
    return figure


def action_units_figure(faces, title: str = ""):
    """Each face's AU probabilities over time as a heatmap (AUs x time)."""
    au_names = action_unit_names(faces)
    groups = _face_groups(faces)
    figure = _figure(figsize=(9, 2.6 * len(groups) + 0.6))
    axes = figure.subplots(len(groups), 1, squeeze=False)
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
    axes[0, 0].set_title(f"Action units: {title}")
    return figure


def faces_figure(faces):
    """Per face of one picture: its circumplex point, its expression probabilities and its AU probabilities
    (active ones in red): what the app shows beside the picture."""
    faces = faces[faces["face_id"].notna()]
    labels, au_names = expression_labels(faces), action_unit_names(faces)
    has_va = "valence" in faces
    columns = 1 + has_va + bool(au_names)
    count = max(len(faces), 1)
    figure = _figure(figsize=(4.2 * columns, 3.4 * count), layout="tight")
    axes = figure.subplots(count, columns, squeeze=False)
    if not len(faces):
        axes[0, 0].text(0.5, 0.5, "no face found", ha="center", va="center", fontsize=14)
        axes[0, 0].set_axis_off()
    for (_, face), face_axes in zip(faces.iterrows(), axes, strict=False):
        panels = iter(face_axes)
        if has_va:
            axis = next(panels)
            _unit_circle(axis)
            axis.scatter([face["valence"]], [face["arousal"]], s=80, color="tab:red")
            axis.set_title(f"face {int(face['face_id'])}: V {face['valence']:+.2f}, A {face['arousal']:+.2f}",
                           fontsize=9)  # fmt: skip
        axis = next(panels)
        axis.barh(labels, [face[f"expression_{label}"] for label in labels], color="tab:blue")
        axis.set_xlim(0, 1)
        axis.invert_yaxis()
        axis.set_title(f"expression: {face['expression']}", fontsize=9)
        if au_names:
            axis = next(panels)
            colours = ["tab:red" if face[name] else "tab:grey" for name in au_names]
            axis.barh(au_names, [face[f"{name}_probability"] for name in au_names], color=colours)
            axis.set_xlim(0, 1)
            axis.invert_yaxis()
            axis.set_title("action units (red: active)", fontsize=9)
    return figure


__all__ = [
    "MAX_FACES_PLOTTED",
    "action_unit_names",
    "action_units_figure",
    "circumplex_figure",
    "expression_labels",
    "expressions_figure",
    "faces_figure",
    "save_plots",
    "valence_arousal_figure",
]
