"""Dynamic batching, composed around a loaded model."""

from polystack.batching.batcher import DynamicBatcher
from polystack.batching.policy import BatchOverrides, BatchPolicy, QueuePolicy

__all__ = ["BatchOverrides", "BatchPolicy", "DynamicBatcher", "QueuePolicy"]
