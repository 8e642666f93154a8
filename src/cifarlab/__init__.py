"""cifarlab: CIFAR-10/100 training, from the classic TensorFlow tutorial to fast modern recipes."""

__version__ = "0.1.0"
