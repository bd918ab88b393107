"""eat-keras: EfficientAT audio taggers (MN, DyMN) in pure TensorFlow/Keras."""

__version__ = "0.1.0"
