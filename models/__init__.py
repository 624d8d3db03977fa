"""Every architecture of the seed papers behind one registry (see ``models.registry`` for the contract)."""
from models.registry import (check_model_options, create_model, list_models, model_entry, prepare_images,
                             register_model)

# Importing a family registers its models.
from models import effnet1d, resnet  # noqa: F401  (seeds 000, 001)
from models import ghost, hourglass  # noqa: F401  (seeds 002, 003, 004)

__all__ = ["check_model_options", "create_model", "list_models", "model_entry", "prepare_images", "register_model"]
