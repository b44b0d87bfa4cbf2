"""circuit-discovery: find, score, store and compare circuits in transformer language models."""

__version__ = "0.1.0"
