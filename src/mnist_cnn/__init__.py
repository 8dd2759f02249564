"""mnist-cnn: train, inspect and use small convolutional networks on MNIST-family images."""

__version__ = "0.1.0"
