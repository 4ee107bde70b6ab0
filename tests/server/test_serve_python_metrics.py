"""A Python model's custom metrics (``pb_utils.MetricFamily``) on the server's /metrics, as tritonserver 2.51 shows
them: made in ``initialize``, counted in ``execute``, kept across the model's unload and counted on by its next
load; a refusal fails only the call that asked it."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from servekit import cli_server, free_port
from test_serve_python_models import python_folder
from tritonclient.utils import InferenceServerException

COUNTING = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        # the families are kept with their metrics: a Metric whose family object is gone raises, as in Triton
        self.requests = pb_utils.MetricFamily(name="requests_seen", description="Requests the model saw",
                                              kind=pb_utils.MetricFamily.COUNTER)
        self.seen = self.requests.Metric(labels={"model": args["model_name"]})
        self.rows_family = pb_utils.MetricFamily("rows_seen", "Rows per request", pb_utils.MetricFamily.HISTOGRAM)
        self.rows = self.rows_family.Metric(labels={"model": args["model_name"]}, buckets=[1, 4])

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            if x[0, 0] < 0:
                self.seen.increment(-1)  # refused: a counter only grows
            self.seen.increment(1)
            self.rows.observe(len(x))
            total = np.array([[self.seen.value()]] * len(x), dtype=np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", total)]))
        return responses
'''


def test_a_models_metrics_show_on_metrics_and_outlive_its_unload(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    python_folder(repo, "counting", COUNTING,
        'backend: "python"\nmax_batch_size: 8\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 2 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
    )
    port, metrics_port = free_port(), free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1", "--model-control-mode",
            "explicit", "--load-model", "counting", "--metrics-port", str(metrics_port)]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")

        def infer(rows: int, value: float = 1.0) -> float:
            x = httpclient.InferInput("x", [rows, 2], "FP32")
            x.set_data_from_numpy(np.full((rows, 2), value, np.float32))
            return float(client.infer("counting", [x]).as_numpy("y")[0, 0])

        def scraped() -> str:
            return httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text

        assert 'requests_seen{model="counting"} 0\n' in scraped()  # its series are there from its initialize
        assert [infer(1), infer(3)] == [1.0, 2.0]
        text = scraped()
        assert "# HELP requests_seen Requests the model saw\n# TYPE requests_seen counter\n" in text
        assert 'requests_seen{model="counting"} 2\n' in text
        assert (
            'rows_seen_count{model="counting"} 2\nrows_seen_sum{model="counting"} 4\n'
            'rows_seen_bucket{model="counting",le="1"} 1\nrows_seen_bucket{model="counting",le="4"} 2\n'
            'rows_seen_bucket{model="counting",le="+Inf"} 2\n'
        ) in text
        with pytest.raises(InferenceServerException, match="can only be incremented monotonically") as caught:
            infer(1, -1.0)
        assert caught.value.status() == "500"
        assert 'requests_seen{model="counting"} 2\n' in scraped()  # the refusal changed nothing
        client.unload_model("counting")
        assert 'requests_seen{model="counting"} 2\n' in scraped()  # kept, as Triton keeps them
        client.load_model("counting")
        assert infer(1) == 3.0  # its next load counts on
