"""A model the server no longer serves (unloaded, or replaced by a load of changed files) is freed, whatever
requests named it while it served: a server whose models are updated for weeks keeps one copy of each
(helper-231: each old copy of a Python model, its weights with it, stayed in memory until about 1,024 loads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from servekit import until
from test_serve_python_models import python_folder, served

# says so in a file once Python frees it (its instance, and what the instance holds: its weights)
HELD = """
import os
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.weights = np.ones(1_000_000, np.float32)
        self.freed = os.environ["FREED_FILE"]

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())])
                for r in requests]

    def __del__(self):
        with open(self.freed, "a") as f:
            f.write("freed\\n")
"""
CONFIG = (
    'backend: "python"\nmax_batch_size: 8\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 4 ] } ]\n'
    'output [ { name: "y", data_type: TYPE_FP32, dims: [ 4 ] } ]\n'
)


def _infer(client: httpclient.InferenceServerClient) -> None:
    x = httpclient.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.ones((1, 4), np.float32))
    np.testing.assert_array_equal(client.infer("held", [x]).as_numpy("y"), np.ones((1, 4), np.float32))


# under the rate limiter, with batching and two instances: its closures made the model reference-cycle garbage,
# which Python's collector reached late (helper-236: +76 MB a cycle)
LIMITED = (
    'dynamic_batching { }\ninstance_group [ { count: 2, kind: KIND_CPU, rate_limiter { resources [ { name: "R" '
    "count: 1 } ] } } ]\n"
)


@pytest.mark.parametrize("limited", [False, True], ids=["plain", "rate-limited"])
def test_an_unloaded_or_replaced_model_is_freed_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limited: bool
) -> None:
    freed = tmp_path / "freed"
    monkeypatch.setenv("FREED_FILE", str(freed))
    repo = tmp_path / "models"
    python_folder(repo, "held", HELD, CONFIG + (LIMITED if limited else ""))
    flags = ("--model-control-mode", "explicit", "--load-model", "held")
    flags += ("--rate-limit", "execution_count") if limited else ()
    per_load = 2 if limited else 1  # its instances
    with served(tmp_path, repo, *flags) as client:

        def count() -> int:  # no request meanwhile: the unload or load itself frees the old model
            return freed.read_text().count("freed") if freed.exists() else 0

        for _ in range(3):  # served, asked (infer and metadata), then unloaded
            _infer(client)
            client.get_model_metadata("held")
            client.unload_model("held")
            client.load_model("held")
        assert until(lambda: count() == 3 * per_load, within_s=10), count()
        for edit in range(2):  # replaced by a load of changed files, as a model is updated
            _infer(client)
            with (repo / "held" / "1" / "model.py").open("a") as f:
                f.write(f"# edit {edit}\n")
            client.load_model("held")
        assert until(lambda: count() == 5 * per_load, within_s=10), count()
        _infer(client)  # the one loaded now serves on
