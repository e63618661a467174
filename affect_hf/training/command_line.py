"""The training command line: `HfArgumentParser` over the loop's dataclass and the recipe's.

`--recipe` picks the recipe first; its own argument dataclass is then parsed beside `TrainingArguments`, and the
recipe's defaults (learning rate, epochs, batch, optimiser betas ...) fill every loop field left unset, so
`python scripts/train.py --recipe mae --help` shows MAE's options and MAE's defaults. A single `.yaml`, `.yml`
or `.json` file may hold the same options. An option that belongs to no part of the chosen recipe is refused by
name.
"""

import json
import sys
from dataclasses import fields
from types import SimpleNamespace
from typing import Any

import yaml
from transformers import HfArgumentParser

from .arguments import TrainingArguments
from .recipes import RECIPE_NAMES, get_recipe


def _recipe_name(argv: list[str], file_options: dict | None) -> str:
    if file_options is not None:
        return file_options.get("recipe", TrainingArguments.recipe)
    for index, token in enumerate(argv):
        if token == "--recipe" and index + 1 < len(argv):
            return argv[index + 1]
        if token.startswith("--recipe="):
            return token.split("=", 1)[1]
    return TrainingArguments.recipe


def _read_options_file(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        options = yaml.safe_load(handle) if path.endswith((".yaml", ".yml")) else json.load(handle)
    if not isinstance(options, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values, found {type(options).__name__}")
    return options


def parse_train_arguments(argv: list[str] | None = None) -> tuple[TrainingArguments, Any]:
    """(loop arguments, recipe arguments) from flags, or from a single `.yaml` / `.yml` / `.json` file."""
    argv = sys.argv[1:] if argv is None else argv
    file_options = None
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml", ".json")):
        file_options = _read_options_file(argv[0])
    name = _recipe_name(argv, file_options)
    if name not in RECIPE_NAMES:
        raise SystemExit(f"--recipe must be one of {', '.join(RECIPE_NAMES)}, got {name!r}")
    recipe_class = get_recipe(name)
    parser = HfArgumentParser((TrainingArguments, recipe_class.arguments_class))
    parser.description = f"Train with the {name} recipe: {recipe_class.description}"
    if file_options is not None:
        known = {f.name for dataclass_type in parser.dataclass_types for f in fields(dataclass_type)}
        unknown = sorted(set(file_options) - known)
        if unknown:
            parser.error(f"{argv[0]}: {_unknown_options_message(unknown, name)}")
        return tuple(parser.parse_dict(file_options))
    if "-h" in argv or "--help" in argv:
        # Show the recipe's defaults; when training they are filled in by `TrainingArguments.with_defaults`, after
        # the recipe's own options are known (CoTEX's batch grows with its mask ratio).
        defaults = {f.name: f.default for f in fields(recipe_class.arguments_class)}
        parser.set_defaults(**recipe_class.loop_defaults(SimpleNamespace(**defaults)))
    *arguments, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if remaining:
        options = [token.split("=", 1)[0].lstrip("-") for token in remaining if token.startswith("-")]
        parser.error(_unknown_options_message(options or remaining, name))
    return tuple(arguments)


def _unknown_options_message(options: list[str], recipe: str) -> str:
    """Name the options the recipe does not take, and the recipes that do take them."""
    parts = []
    for option in options:
        owners = [
            other
            for other in RECIPE_NAMES
            if option.replace("-", "_") in {f.name for f in fields(get_recipe(other).arguments_class)}
        ]
        plural = "s" if len(owners) > 1 else ""
        parts.append(f"--{option}" + (f" (an option of the {' and '.join(owners)} recipe{plural})" if owners else ""))
    return f"not an option of the {recipe} recipe: {', '.join(parts)}; see --recipe {recipe} --help"
