"""Contracts said once: the checkpoint schema matches what TrainState writes, the stand-in logger
has exactly the real logger's methods, and both strategies answer the Strategy protocol."""
import inspect

import pytest
import torch

from mnist_cnn import config as cfg
from mnist_cnn.checkpoint import REQUIRED_KEYS, check_schema
from mnist_cnn.distributed import DDP, SingleProcess, Strategy
from mnist_cnn.runlog import NullLogger, RunLogger
from mnist_cnn.runs import EpochRecord
from mnist_cnn.trainstate import CHECKPOINT_SCHEMA, RESUME_KEYS, TrainState


def public_methods(cls) -> set[str]:
    return {n for n, v in vars(cls).items() if callable(v) and not n.startswith("_")}


def test_state_dict_writes_exactly_the_declared_schema():
    config = cfg.make_config("seed", epochs=1, batch_size=10)
    state = TrainState.create(config, tuple("0123456789"), 1, 40, torch.device("cpu"))
    state.finish_epoch(EpochRecord(1, 1.0, 1e-4, 0.5, 0.8, 0.4, 0.9))
    saved = state.state_dict()
    assert list(saved) == list(CHECKPOINT_SCHEMA)
    assert check_schema(saved) is None
    assert set(REQUIRED_KEYS) - {"format", "version"} | set(RESUME_KEYS) <= set(saved)


def test_the_schema_check_names_a_wrong_field():
    config = cfg.make_config("seed", epochs=1, batch_size=10)
    saved = TrainState.create(config, ("a", "b"), 1, 40, torch.device("cpu")).state_dict()
    assert "'epoch'" in check_schema({**saved, "epoch": -1})
    assert "'history'" in check_schema({**saved, "history": [{"epoch": 1}]})


def test_null_logger_has_the_real_loggers_methods_and_no_catch_all():
    assert public_methods(NullLogger) == public_methods(RunLogger)
    for name in public_methods(RunLogger):
        real, stand_in = inspect.signature(getattr(RunLogger, name)), inspect.signature(getattr(NullLogger, name))
        assert list(real.parameters) == list(stand_in.parameters), name
    with pytest.raises(AttributeError):
        NullLogger().epoch_ends  # a misspelt call fails loudly


@pytest.mark.parametrize("strategy", [SingleProcess, DDP])
def test_strategies_answer_the_protocol(strategy):
    wanted = {n for n in vars(Strategy) if not n.startswith("_")} - {"device", "info"}
    assert wanted <= {n for n in dir(strategy) if not n.startswith("_")}


def test_every_commands_help_is_built_without_torch():
    """The flags of train, serve, tune and lr-find come from their settings dataclasses, which
    live in torch-free modules: `mnist-cnn COMMAND --help` answers without importing torch."""
    import subprocess
    import sys

    code = ("import sys, mnist_cnn.cli; mnist_cnn.cli.build_parser(); "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('mnist_cnn'))")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
