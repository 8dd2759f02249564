"""The default recipe on real MNIST, to an accuracy floor (about half a minute on 2 idle cores)."""
import pytest

from mnist_cnn import config as cfg
from mnist_cnn.data import load_dataset
from mnist_cnn.inference import loss_and_accuracy
from mnist_cnn.train import train


@pytest.mark.slow
def test_default_recipe_reaches_98_5_percent_validation(real_mnist_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("MNIST_CNN_DATA", str(real_mnist_cache))
    dataset = load_dataset("mnist", progress=False)
    lines = []
    result = train(cfg.make_config("default"), out_dir=tmp_path, name="real", dataset=dataset,
                   print_fn=lines.append, progress=False)
    assert result.history[-1].validation_accuracy >= 0.985, lines
    test_loss, test_accuracy = loss_and_accuracy(result.model, dataset.test.images, dataset.test.labels)
    assert test_accuracy >= 0.985 and test_loss < 0.06
