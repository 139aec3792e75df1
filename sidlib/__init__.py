"""sidlib: SID, SLL and their baselines, in PyTorch. See the README and the book."""
__version__ = "0.1.0"
