"""The package version (a module of its own, so every layer can import it without importing the package's public API)."""

__version__ = "0.1.0.dev0"
