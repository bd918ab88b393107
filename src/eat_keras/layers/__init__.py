"""Keras layers of the EfficientAT networks (NHWC: mel as height, time as width)."""

from eat_keras.builtin_ops import builtin_ops_only
from eat_keras.layers.activations import hard_swish
from eat_keras.layers.context import ContextGenerator
from eat_keras.layers.conv_bn import ConvBNAct
from eat_keras.layers.coordinate_attention import CoordinateAttention
from eat_keras.layers.dynamic_conv import DynamicConv
from eat_keras.layers.dyrelu import DynamicReLU
from eat_keras.layers.squeeze_excitation import SqueezeExcitation

__all__ = [
    "ContextGenerator",
    "ConvBNAct",
    "CoordinateAttention",
    "DynamicConv",
    "DynamicReLU",
    "SqueezeExcitation",
    "builtin_ops_only",
    "hard_swish",
]
