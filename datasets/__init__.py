"""BatVision V1/V2 readers, their named preprocessing recipes and the preprocessing cache."""
from datasets.batvision import BatvisionV1Dataset, BatvisionV2Dataset
from datasets.errors import DataError
from datasets.recipes import RECIPES, Recipe, get_recipe

__all__ = ["BatvisionV1Dataset", "BatvisionV2Dataset", "DataError", "RECIPES", "Recipe",
           "get_recipe"]
