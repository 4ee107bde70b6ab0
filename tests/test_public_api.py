import subprocess
import sys

import polystack

PINNED = [
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


def test_public_api_is_pinned() -> None:
    assert sorted(polystack.__all__) == sorted(PINNED)
    for name in polystack.__all__:
        assert hasattr(polystack, name), name


def test_import_polystack_loads_no_heavy_runtime() -> None:
    code = (
        "import sys, polystack, polystack.cli, polystack.engine, polystack.backends.registry;"
        "heavy = [m for m in ('torch', 'jax', 'openvino', 'ray', 'tensorflow', 'onnxruntime', 'sklearn', 'xgboost',"
        " 'lightgbm') if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
