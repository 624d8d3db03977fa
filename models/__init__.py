"""Every architecture of the five papers (docs/references.md) behind one registry (``models.registry`` has the
contract)."""
from models.registry import (check_model_options, create_model, list_models, model_entry, prepare_images,
                             register_model)

# Importing a family registers its models.
from models import effnet1d, resnet  # noqa: F401  (Schneider 2020, Reichardt 2021)
from models import ghost, hourglass  # noqa: F401  (Liu 2022, Liu 2018, He 2021)

__all__ = ["check_model_options", "create_model", "list_models", "model_entry", "prepare_images", "register_model"]
