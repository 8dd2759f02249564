import math

import pytest

from mnist_cnn import config as cfg
from mnist_cnn.errors import UsageError


def test_seed_preset_is_the_lesson():
    c = cfg.make_config("seed")
    assert (c.model, c.optimizer, c.lr, c.batch_size, c.epochs, c.schedule) == ("seed", "adam", 1e-4, 100, 100, "constant")
    assert c.label_smoothing == 0 and c.validation_size == 5000 and c.preset == "seed"


def test_overrides_apply_and_none_means_keep():
    c = cfg.make_config("seed", epochs=3, lr=None)
    assert c.epochs == 3 and c.lr == 1e-4


@pytest.mark.parametrize("key,value", [
    ("epochs", 0), ("epochs", -1), ("batch_size", 0), ("lr", 0.0), ("lr", math.nan), ("lr", math.inf),
    ("lr", -1e-3), ("warmup", 1.0), ("label_smoothing", 1.0), ("optimizer", "rmsprop"), ("model", "nope"),
    ("epochs", "three"), ("epochs", 2.5), ("channels_last", "maybe"), ("validation_size", 0),
])
def test_bad_values_are_rejected_with_the_field_name(key, value):
    with pytest.raises(UsageError) as e:
        cfg.make_config("default", **{key: value})
    assert key in str(e.value) or "model" in str(e.value)


def test_unknown_preset_and_key():
    with pytest.raises(UsageError, match="unknown preset"):
        cfg.make_config("turbo")
    with pytest.raises(UsageError, match="unknown config key"):
        cfg.from_dict({"epochz": 3})


def test_round_trip_through_dict_with_string_values():
    c = cfg.make_config("default", epochs=2)
    again = cfg.from_dict({k: str(v) if v is not None else None for k, v in cfg.to_dict(c).items()})
    assert again == c
