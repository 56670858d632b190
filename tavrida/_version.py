"""The version of tavrida: the one place it is written (setup.py and the docs read it)."""

__version__ = "2.0.0.dev0"
