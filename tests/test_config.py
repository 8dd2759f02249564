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


@pytest.mark.parametrize("key,value,message", [
    ("epochs", 0, "epochs must be a positive integer, not 0"),
    ("epochs", -1, "epochs must be a positive integer, not -1"),
    ("batch_size", 0, "batch_size must be a positive integer, not 0"),
    ("lr", 0.0, "lr must be a positive finite number, not 0.0"),
    ("lr", math.nan, "lr must be a positive finite number, not nan"),
    ("lr", math.inf, "lr must be a positive finite number, not inf"),
    ("lr", -1e-3, "lr must be a positive finite number, not -0.001"),
    ("warmup", 1.0, "warmup must be a fraction in [0, 1), not 1.0"),
    ("label_smoothing", 1.0, "label_smoothing must be in [0, 1), not 1.0"),
    ("optimizer", "rmsprop", "optimizer must be one of adam, adamw, sgd, not 'rmsprop'"),
    ("model", "nope", "unknown model 'nope'; choose one of: best, fast, pyramid, resnet, seed"),
    ("epochs", "three", "epochs: 'three' is not a valid int"),
    ("epochs", 2.5, "epochs: 2.5 is not a valid int"),
    ("channels_last", "maybe", "channels_last: 'maybe' is not a valid bool"),
    ("validation_size", 0, "validation_size must be a positive integer, not 0"),
])
def test_bad_values_are_rejected_with_the_field_name(key, value, message):
    with pytest.raises(UsageError) as e:
        cfg.make_config("default", **{key: value})
    assert str(e.value) == message


def test_unknown_preset_and_key():
    with pytest.raises(UsageError, match="unknown preset"):
        cfg.make_config("turbo")
    with pytest.raises(UsageError, match="unknown config key"):
        cfg.from_dict({"epochz": 3})


def test_round_trip_through_dict_with_string_values():
    c = cfg.make_config("default", epochs=2)
    again = cfg.from_dict({k: str(v) if v is not None else None for k, v in cfg.to_dict(c).items()})
    assert again == c
