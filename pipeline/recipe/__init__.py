"""Recipes: TOML files checked against the stage schemas (and the stage contracts) before anything runs."""

from .loader import Recipe, load_recipe

__all__ = ["Recipe", "load_recipe"]
