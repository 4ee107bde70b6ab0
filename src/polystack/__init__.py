"""polystack: register a model once; build, verify, measure and serve its fastest correct variant.

Importing polystack imports no heavy runtime (torch, jax, openvino, ray): they load on first use.
"""

from polystack.backends.base import Backend, CheckedModel, LoadedModel
from polystack.config import StoreSettings
from polystack.engine import Engine, LoadedEntry, LoadSpec, ModelMetadata
from polystack.errors import (
    BackendError,
    BackendUnavailable,
    InvalidModelFile,
    InvalidName,
    InvalidRequest,
    InvalidTensor,
    ModelNotFound,
    ModelNotReady,
    NotFound,
    PolystackError,
    UnsafeModel,
    UnsupportedFormat,
    VersionNotFound,
)
from polystack.formats import ImportedModel, import_model
from polystack.store import ModelRecord, ModelRef, Store
from polystack.types import DType, Signature, TensorSpec

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "CheckedModel",
    "DType",
    "Engine",
    "ImportedModel",
    "InvalidModelFile",
    "InvalidName",
    "InvalidRequest",
    "InvalidTensor",
    "LoadSpec",
    "LoadedEntry",
    "LoadedModel",
    "ModelMetadata",
    "ModelNotFound",
    "ModelNotReady",
    "ModelRecord",
    "ModelRef",
    "NotFound",
    "PolystackError",
    "Signature",
    "Store",
    "StoreSettings",
    "TensorSpec",
    "UnsafeModel",
    "UnsupportedFormat",
    "VersionNotFound",
    "__version__",
    "import_model",
]
