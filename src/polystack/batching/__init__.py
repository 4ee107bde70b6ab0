"""Dynamic batching, composed around a loaded model."""

from polystack.batching.batcher import DynamicBatcher
from polystack.batching.policy import BatchPolicy

__all__ = ["BatchPolicy", "DynamicBatcher"]
