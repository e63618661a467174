"""The recipes: what each model of the paper is trained on and how it is scored (the loop says how to train)."""

from .base import Evaluation, Recipe, RecipeData


def get_recipe(name: str) -> type[Recipe]:
    """The recipe class registered under `name` (imported on demand: each pulls in its own data code)."""
    if name == "emma":
        from .emma import EmmaRecipe as recipe
    elif name == "mae":
        from .mae import MaeRecipe as recipe
    elif name == "cotex":
        from .cotex import CotexRecipe as recipe
    elif name == "dan":
        from .dan import DanRecipe as recipe
    else:
        from ..arguments import RECIPE_NAMES

        raise ValueError(f"unknown recipe {name!r}; expected one of {', '.join(RECIPE_NAMES)}")
    return recipe


__all__ = ["Evaluation", "Recipe", "RecipeData", "get_recipe"]
