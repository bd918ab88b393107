"""Keras layers of the EfficientAT networks (NHWC: mel as height, time as width)."""

from eat_keras.layers.activations import hard_swish
from eat_keras.layers.conv_bn import ConvBNAct
from eat_keras.layers.squeeze_excitation import SqueezeExcitation

__all__ = ["ConvBNAct", "SqueezeExcitation", "hard_swish"]
