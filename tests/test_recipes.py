"""Recipe names: an earlier name still trains its recipe and says the new name; names never say "seed"."""
import models
import train
from training import recipes
from training.config import resolve_config


def test_every_earlier_name_points_at_a_recipe_that_exists():
    assert set(recipes.RECIPE_ALIASES.values()) <= set(recipes.RECIPES)
    assert not set(recipes.RECIPE_ALIASES) & set(recipes.RECIPES)


def test_an_earlier_name_resolves_to_the_new_recipe_and_announces_it(said):
    config, _ = resolve_config(train.parse_args(["--recipe", "synthetic_cpu"]))
    assert config["recipe"] == "hourglass_attn_64_cpu" and config["arch"] == "hourglass_attn"
    assert said() == ["recipe 'synthetic_cpu' is now called 'hourglass_attn_64_cpu'; the old name will stop working"]


def test_the_new_name_is_quiet(said):
    config, _ = resolve_config(train.parse_args(["--recipe", "effb0_unet_64_cpu"]))
    assert config["recipe"] == "effb0_unet_64_cpu" and said() == []


def test_no_recipe_or_paper_name_says_seed():
    assert not [name for name in recipes.RECIPES if "seed" in name]
    assert all(models.model_entry(name).paper.isidentifier() for name in models.list_models())
    assert not [name for name in models.list_models() if "seed" in models.model_entry(name).paper]
