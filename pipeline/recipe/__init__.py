"""Recipes: TOML files (or the Python API's tables), their top-level, [model] and [data] tables checked;
the stage list is checked by otcompress.plan."""

from .loader import Recipe, load_recipe, recipe_from_table

__all__ = ["Recipe", "load_recipe", "recipe_from_table"]
