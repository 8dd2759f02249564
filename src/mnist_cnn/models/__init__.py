"""The networks, each registered by name and built with `create_model(name)` (registry.py).

Adding a model is writing one class in a module of this folder, decorated with
`@register("name")`, and adding that module to the import line below: registering happens when
the module is imported. Every model takes `(N, C, 28, 28)` float32 images scaled to [0, 1] and
returns `(N, num_classes)` logits, so training, evaluation, export and serving treat them alike.
"""
from mnist_cnn.models import best, fast, pyramid, resnet, seed  # noqa: F401  (importing a module registers its model)
from mnist_cnn.models.ensemble import Ensemble
from mnist_cnn.models.registry import (SHAPE_OPTIONS, count_parameters, create_model, load_model_state, model_names,
                                       register, saved_shape, shape_options)

__all__ = ["Ensemble", "SHAPE_OPTIONS", "count_parameters", "create_model", "load_model_state", "model_names", "register",
           "saved_shape", "shape_options"]
