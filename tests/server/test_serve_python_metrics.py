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


LIFETIMES = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.kept = pb_utils.MetricFamily(name="kept_family", description="kept", kind=pb_utils.MetricFamily.COUNTER)
        self.seen = self.kept.Metric(labels={"k": "seen"})
        self.empty = pb_utils.MetricFamily(name="empty_family", description="none", kind=pb_utils.MetricFamily.GAUGE)
        dropped = pb_utils.MetricFamily(name="dropped_family", description="gone", kind=pb_utils.MetricFamily.GAUGE)
        self.orphan = dropped.Metric(labels={"k": "orphan"})
        self.orphan.set(5)
        del dropped  # its series leave with it; the Metric kept raises on use
        shared = pb_utils.MetricFamily(name="kept_family", description="kept", kind=pb_utils.MetricFamily.COUNTER)
        shared.Metric(labels={"k": "seen"}).increment(10)  # the same series, which self.kept still holds (where
        # tritonserver 2.51 drops the series as shared goes, and crashes at the next load: its holds are per object)

    def execute(self, requests):
        for request in requests:
            self.seen.increment(1)
            family = pb_utils.MetricFamily(name="per_request", description="made and dropped",
                                           kind=pb_utils.MetricFamily.COUNTER)
            family.Metric(labels={"k": "request"}).increment(1)
        try:
            self.orphan.set(1)
            failed = ""
        except pb_utils.TritonModelException as e:
            failed = str(e)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", np.array([failed.encode()], dtype=np.object_))])
                for _ in requests]
'''


def test_a_deleted_metric_familys_series_leave_metrics_and_an_empty_family_shows_nothing(tmp_path: Path) -> None:
    """As tritonserver 2.51 shows them (run here beside polystack): a ``MetricFamily`` object deleted takes the series
    it made with it, a family with no series has no lines, and what the model keeps outlives its unload."""
    repo = tmp_path / "models"
    python_folder(repo, "lifetimes", LIFETIMES,
        'backend: "python"\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_STRING, dims: [ 1 ] } ]\n'
    )
    port, metrics_port = free_port(), free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1", "--model-control-mode",
            "explicit", "--load-model", "lifetimes", "--metrics-port", str(metrics_port)]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")

        def infer() -> str:
            x = httpclient.InferInput("x", [1], "FP32")
            x.set_data_from_numpy(np.ones(1, np.float32))
            return str(client.infer("lifetimes", [x]).as_numpy("y")[0].decode())

        def scraped() -> list[str]:
            text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
            return [line for line in text.splitlines() if "_family" in line or "per_request" in line]

        assert infer() == (  # tritonserver 2.51's words
            "Failed to set metric value: Invalid metric operation as the corresponding 'MetricFamily' has been "
            "deleted. The 'MetricFamily' object should be deleted AFTER its corresponding 'Metric' objects have "
            "been deleted."
        )
        infer()
        kept = ["# HELP kept_family kept", "# TYPE kept_family counter", 'kept_family{k="seen"} 12']
        assert scraped() == kept  # no dropped_family, empty_family nor per_request lines
        client.unload_model("lifetimes")
        assert scraped() == kept  # what the model kept stays, as Triton's does
        client.load_model("lifetimes")
        infer()
        assert scraped() == [*kept[:2], 'kept_family{k="seen"} 23']
