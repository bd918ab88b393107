"""An independent PyTorch re-implementation of upstream EfficientAT, the oracle eat-keras is checked
against, and its own test. The benchmark tools import it from here to make upstream-style ONNX files."""
