"""The package version (read by the card and report, and by ``stillroom.__version__``)."""

__version__ = "0.1.0"
