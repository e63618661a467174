"""The recipes: what each model of the paper is trained on and how it is scored (the loop says how to train).

`RECIPES` is the one home of the recipe names; each recipe module is imported when its recipe is asked for (each
pulls in its own data code). From outside `affect_hf.training`, recipes are reached through `get_recipe` only.
"""

from importlib import import_module


# Recipe name -> its class, in the module of the same name.
RECIPES = {"emma": "EmmaRecipe", "mae": "MaeRecipe", "cotex": "CotexRecipe", "dan": "DanRecipe",
           "temporal": "TemporalRecipe"}  # fmt: skip
RECIPE_NAMES = tuple(RECIPES)


def get_recipe(name: str) -> type:
    """The recipe class registered under `name` (a subclass of `recipes.base.Recipe`)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; expected one of {', '.join(RECIPE_NAMES)}")
    return getattr(import_module(f".{name}", __name__), RECIPES[name])


__all__ = ["RECIPES", "RECIPE_NAMES", "get_recipe"]
