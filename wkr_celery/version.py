"""The package version, shared by client and workers for the version check."""

__version__ = "0.1.0"
