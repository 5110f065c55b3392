"""The architecture of the example model: a factory robust imports for `--arch my_model:make_net`.

A plain `.safetensors` state dict holds tensors only (nothing runs when it is read), so robust needs
the code that builds the module: `--arch MODULE:FACTORY` imports MODULE (from PYTHONPATH) and calls
FACTORY() to get an untrained module, then loads the weights into it.
"""

from torch import nn


def make_net() -> nn.Module:
    """A 64-64-10 MLP on 8x8 grey images in [0, 1] (scikit-learn's digits)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
