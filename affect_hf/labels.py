"""The label spaces in one place: names, orders, missing codes and the mappings between orders."""

import numpy as np

from .modeling.affect_labels import (
    ABAW_EXPRESSIONS,
    ACTION_UNITS,
    AFFECTNET_EXPRESSIONS,
    LSD_EXPRESSIONS,
    MISSING_ACTION_UNIT,
    MISSING_EXPRESSION,
    MISSING_VALENCE_AROUSAL,
)


# Folder names of the released LSD training set; the anger folder ships misspelled.
LSD_FOLDER_ALIASES = {"ANGRER": "Anger"}

# Other spellings of AffectNet class folders (upper case; matched in any case).
AFFECTNET_FOLDER_ALIASES = {
    "HAPPINESS": "Happy",
    "SADNESS": "Sad",
    "SURPRISED": "Surprise",
    "FEARFUL": "Fear",
    "DISGUSTED": "Disgust",
    "ANGRY": "Anger",
}
# AffectNet's annotation codes beyond the 8 expressions: rows with these are not expression labels.
AFFECTNET_NON_EXPRESSION_CODES = {8: "None", 9: "Uncertain", 10: "Non-Face"}

# AffectNet index -> ABAW index (Happy -> Happiness, ..., Contempt -> Other).
_AFFECTNET_TO_ABAW_NAME = {
    "Neutral": "Neutral",
    "Happy": "Happiness",
    "Sad": "Sadness",
    "Surprise": "Surprise",
    "Fear": "Fear",
    "Disgust": "Disgust",
    "Anger": "Anger",
    "Contempt": "Other",
}
AFFECTNET_TO_ABAW = tuple(ABAW_EXPRESSIONS.index(_AFFECTNET_TO_ABAW_NAME[name]) for name in AFFECTNET_EXPRESSIONS)

NUM_EXPRESSIONS = len(ABAW_EXPRESSIONS)
NUM_ACTION_UNITS = len(ACTION_UNITS)

# What an ABAW annotation may hold, per task: a value of its range or the task's missing code.
LABEL_RULES = {
    "va": f"valence and arousal must lie in [-1, 1] or be {MISSING_VALENCE_AROUSAL:g} (missing)",
    "expr": f"the expression must be an integer in {MISSING_EXPRESSION}..{NUM_EXPRESSIONS - 1}",
    "au": f"action units must be 0, 1 or {MISSING_ACTION_UNIT} (missing)",
}


def valid_labels(task: str, values) -> np.ndarray:
    """Elementwise: whether each value is a valid `task` label ("va", "expr" or "au") or its missing code."""
    values = np.asarray(values, dtype=np.float64)
    if task == "va":
        return ((values >= -1) & (values <= 1)) | (values == MISSING_VALENCE_AROUSAL)
    if task == "expr":
        return np.isin(values, np.arange(MISSING_EXPRESSION, NUM_EXPRESSIONS))
    if task == "au":
        return np.isin(values, (MISSING_ACTION_UNIT, 0, 1))
    raise ValueError(f"unknown ABAW task {task!r}; expected one of {', '.join(LABEL_RULES)}")


__all__ = [
    "ABAW_EXPRESSIONS",
    "ACTION_UNITS",
    "AFFECTNET_EXPRESSIONS",
    "AFFECTNET_FOLDER_ALIASES",
    "AFFECTNET_NON_EXPRESSION_CODES",
    "AFFECTNET_TO_ABAW",
    "LABEL_RULES",
    "LSD_EXPRESSIONS",
    "LSD_FOLDER_ALIASES",
    "MISSING_ACTION_UNIT",
    "MISSING_EXPRESSION",
    "MISSING_VALENCE_AROUSAL",
    "NUM_ACTION_UNITS",
    "NUM_EXPRESSIONS",
    "valid_labels",
]
