"""Weight import: reading upstream PyTorch checkpoints and ONNX files without torch."""
