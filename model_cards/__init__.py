"""Model card templates, rendered by `affect_hf.hub` when a model folder is saved or pushed."""

from pathlib import Path


TEMPLATES_DIR = Path(__file__).parent
EMMA_TEMPLATE = TEMPLATES_DIR / "emma.md"
COTEX_TEMPLATE = TEMPLATES_DIR / "cotex.md"
MAE_TEMPLATE = TEMPLATES_DIR / "mae.md"
DAN_TEMPLATE = TEMPLATES_DIR / "dan.md"
TEMPORAL_TEMPLATE = TEMPLATES_DIR / "temporal.md"
