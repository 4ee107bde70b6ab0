"""Runtime adapters, one module per runtime, found by name through entry points."""

from polystack.backends.base import Backend, CheckedModel, LoadedModel

__all__ = ["Backend", "CheckedModel", "LoadedModel"]
