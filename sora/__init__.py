"""Sora: graph + text recommender."""
__version__ = "0.1.0"
