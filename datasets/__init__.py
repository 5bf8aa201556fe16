"""BatVision V1/V2 readers, their named preprocessing recipes and the preprocessing cache.

``python -m datasets.check --data_root DIR`` reads every sample of a dataset once and lists every
bad file (see ``datasets.check``); ``python -m datasets.stats ROOT --compare REF.json`` measures
how a tree sounds and where its depth holes fall, beside a reference (see ``datasets.stats``).
"""
from datasets.batvision import BatvisionV1Dataset, BatvisionV2Dataset
from datasets.errors import DataError
from datasets.recipes import RECIPES, Recipe, get_recipe

__all__ = ["BatvisionV1Dataset", "BatvisionV2Dataset", "DataError", "RECIPES", "Recipe",
           "get_recipe"]
