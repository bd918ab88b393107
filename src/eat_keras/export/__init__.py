"""Deployable artifacts: SavedModel (TF apps, TF Serving) and TFLite (LiteRT, MediaPipe)."""
