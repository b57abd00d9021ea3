"""The package version (one place; the package, saved manifests and reports read it)."""

__version__ = "0.4.0"
