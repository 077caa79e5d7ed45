"""Evaluation: metrics over model scores (NumPy), benchmark readers, reports."""
