"""tritonserver's ``--backend-config`` values as its command line reads them: ``[BACKEND,]SETTING=VALUE``, a setting
without a backend being every backend's. Each backend polystack stands in for reads its own settings
(``onnxruntime_config.py``, ``python_backend_config.py``)."""

from __future__ import annotations

from polystack.errors import InvalidRequest


def backend_setting(item: str) -> tuple[str, str, str]:
    """``[BACKEND,]SETTING=VALUE`` as Triton's command line reads it: (backend, "" for every backend's; setting;
    value); ``InvalidRequest`` in Triton's words, then what to do, for one it refuses."""
    backend, sep, rest = item.partition(",")
    if not sep:
        backend, rest = "", item
    elif not backend:
        raise InvalidRequest(
            f"--backend-config {item}: No backend specified. --backend-config option format is "
            "<backend name>,<setting>=<value> or <setting>=<value>"
        )
    setting, eq, value = rest.partition("=")
    if not eq or not setting or not value:
        raise InvalidRequest(
            f"--backend-config option format is '<backend name>,<setting>=<value>'. Got {item}; or "
            "'<setting>=<value>' for every backend, e.g. onnxruntime,default-max-batch-size=8"
        )
    return backend, setting, value
