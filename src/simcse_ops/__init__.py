"""simcse-ops: a production pipeline for SimCSE sentence encoders."""

__version__ = "0.1.0"
