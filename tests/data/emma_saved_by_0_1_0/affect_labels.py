"""Label spaces shared by the models and the library.

This file travels to the Hub with every checkpoint (the configs need the names for `id2label`), so it
holds plain Python only. `affect_hf.labels` re-exports everything here; import from there in library code.
"""

# ABAW (Aff-Wild2) expression order, as in the annotation files.
ABAW_EXPRESSIONS = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other")

# ABAW4 learning-from-synthetic-data (LSD) classes, in their official order.
LSD_EXPRESSIONS = ("Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise")

# The 12 action units of the ABAW MTL and AU tracks, in annotation column order.
ACTION_UNITS = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26")

# AffectNet's 8-class order, used by the DAN CNN.
AFFECTNET_EXPRESSIONS = ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt")

# ABAW missing-label codes: every reader, loss and metric masks exactly these.
MISSING_VALENCE_AROUSAL = -5.0
MISSING_EXPRESSION = -1
MISSING_ACTION_UNIT = -1
