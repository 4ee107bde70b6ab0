"""Triton parity: a real tritonserver 2.51 and polystack side by side, the same requests to both, every difference.

    .venv/bin/python bench/triton_parity.py                       # about 15 s (and the wheel's download once)
    .venv/bin/python bench/triton_parity.py --cases 'grpc infer'  # the cases whose name matches a regex

Why: polystack is meant as a drop-in replacement for Triton over the Open Inference Protocol, and what a Triton
user's code meets is Triton's answers (status codes, words, fields), not the protocol's text. Studies by hand (HTTP,
gRPC, control plane; then sequence batching, the dynamic batcher's queue policies, Prometheus metrics, system shared
memory) found the differences once; this finds them again at every commit. It runs tritonserver 2.51.0 from the
`nvidia-pytriton==0.7.0` wheel (fetched once by `bench/triton_reference.py`'s `ensure_tritonserver`; nothing is
installed into a venv) beside `polystack serve`, both with `--model-control-mode explicit --load-model ...` and
their metrics port on free 127.0.0.1 ports, each writing Triton's trace files into a file of its own (`--trace-config
triton,file=...`; polystack with `--allow-shared-memory --triton-metrics --allow-python-models` too: Triton has
shared memory, its metric names and its Python backend on by default), on equivalent repositories built in a
temporary folder:
- `mlp`: FP32 x[-1,4] -> y[-1,3] (x W + b), `max_batch_size: 8`, dynamic batching, y labelled (classification);
- `nobatch`: FP32 x[2,3] -> y = 2x, `max_batch_size: 0`;
- `multi`: INT64 a[-1,3] and BOOL b[-1,3] -> INT64 s = a + Cast(b) and BOOL n = Not(b), `max_batch_size: 4`;
- `pipe`: an ensemble (`platform: "ensemble"` on both) of `step1` (y = 2x) then `step2` (y = x + 1);
- `queued`: mlp's model (without labels) whose dynamic batcher has two priority levels and queue policies
  (`default_queue_policy { max_queue_size: 2 }`, level 1's DELAY with a timeout);
- `acc`: a sequence model (`sequence_batching`, oldest, START/END/READY controls, a UINT64 CORRID, an implicit
  state): FP32 INPUT[-1,1] -> OUTPUT, the sum of its sequence's inputs, ENDED = END x READY and ID = the correlation
  ID (FP32);
- `repeat`: a decoupled Python model (`model_transaction_policy { decoupled: true }`), the same `model.py` on both:
  INT32 IN[-1] -> a response for each element (OUT[1] = the element, UINT32 IDX[1] = its index), then the final
  flag alone; the request parameter `mode` changes that: `final_on_last` (the flag on the last response), `none`
  (the flag alone), `error` (a response, then an error response `boom` with the flag), `raise` (an exception from
  `execute`); and `ens_repeat`, an ensemble of it (decoupled too, unasked, on both).
polystack serves the ONNX files (`platform: "onnxruntime_onnx"`; acc's is `polystack.examples.accumulator_onnx`, its
sum kept in the implicit state); Triton's wheel has only its Python backend, so each of its models is one generic
`model.py` running the same ONNX file with onnxruntime (numeric inputs read with `np.from_dlpack`, outputs written
with `Tensor.from_dlpack`: `as_numpy()` and `Tensor(name, array)` are wrong under numpy 2 in backend 2.51), but acc,
a `model.py` that keeps the sums by correlation ID itself. BYTES end to end is left out: a BYTES input crashes that
stub.

Each case is a small function that sends one request (or a short sequence) and returns a normalized outcome: over
HTTP the status and the JSON body (binary tensors decoded), over gRPC the status code and details, or the response's
set fields and its content (raw tensors decoded); timings and timestamps (`ns`, `last_inference`) are dropped, and
so are the fields that only say which backend runs a model (`platform`, `backend`, `default_model_filename` of the
non-ensemble models: Triton's are the Python backend's). The outcomes are compared: status codes, fields and strings
exactly, numbers within a relative 1e-5; an error message is the same when polystack's starts with Triton's words
once Triton's `[request id: ...] ` prefix is taken off (the README says polystack's messages start with Triton's
words and say what to do after), the missing prefix noted apart. Differences the README documents are marked `known`
(KNOWN below, with the README's words), never hidden. The cases run in one fixed order, each on Triton then on
polystack: metadata and config, inference that succeeds (a sequence's start, middle and end; priorities),
statistics, refusals (sequences without an ID, without START first, of two rows; the queue's parameters of the wrong
type), statistics again, the generate extension, decoupled models (the gRPC stream's answers by request id, each
mode then a good request on the same stream, the empty final asked for or not; ModelInfer's and infer's refusals;
generate and generate_stream, with the answer's Content-Type and its events; an ensemble of it; an error's
traceback is compared with its files named without the temporary folder), settings, trace files (a model's level
set with `log_frequency` 1, one request over HTTP and one over gRPC, or one to the ensemble; the numbered files read
by trace id, each trace's object, its timestamps' names (sorted: Triton's order changes with its threads' timing,
and the times are dropped) and its tensors, in the order the traces were written), system shared memory (register,
status and unregister, one and all; unknown regions, out of bounds, a key that does not exist; an infer whose input
and output are in a region, the answer and the memory compared; an output byte size of 0; the POSIX objects made in
/dev/shm by the script and removed on the way out), model control, and last the metrics port's nv_* families (HELP
and TYPE) and series (names and labels; values move with timing and are not compared). Both servers run in sessions
of their own and are stopped (their process groups killed) on the way out, on Ctrl-C and SIGTERM too; a run that
fails keeps their logs and says where.

Output: a table of every case; bench/results/triton_parity.json and a section of BENCHMARKS.md (a full run
only; `--cases` prints the table alone).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving  # free ports, readiness, stopping a server, results and BENCHMARKS.md sections
import triton_reference  # the tritonserver wheel and its Python backend folder

RESULTS = serving.ROOT / "bench" / "results" / "triton_parity.json"
START, END = "<!-- triton-parity:start -->", "<!-- triton-parity:end -->"
# --load-model; pipe brings step1 and step2
LOADED = ("mlp", "nobatch", "multi", "pipe", "acc", "queued", "repeat", "ens_repeat")
RTOL, ATOL = 1e-5, 1e-6
VOLATILE = frozenset({"ns", "last_inference"})  # durations and timestamps
BACKEND_FIELDS = ("platform", "backend", "default_model_filename")  # Triton's say "python" here
REQUEST_ID = re.compile(r"^\[request id: [^\]]*\] ")
MESSAGE_KEYS = frozenset({"error", "details", "error_message", "reason"})

# Differences the README documents: case -> (a regex matching the whole path of each difference it covers, the
# README's words). A difference of the case that the regex does not cover still counts as a difference.
_NAME = (
    "README: 'Server metadata names the server `polystack`; `--server-name triton` (or tritonserver's `--id triton`)"
    " makes it say `triton`'; '`cuda_shared_memory` is not among the extensions'; '`GET /v2` lists `generate`"
    " (tritonserver 2.51 lists it nowhere; gRPC's ServerMetadata leaves it out: the extension is HTTP's alone)'"
)
_FAILS = (
    "README: requests refused before they run count 'once, as a failure, in the statistics' ... '(Triton counts none"
    " of these in its statistics: it refuses them before its statistics see them)'"
)
_OTHERWISE = (
    "README: '`bench/triton_parity.py` sends the same requests to a real tritonserver 2.51 and to polystack and lists"
    " every difference; those left are these' (the list that follows)"
)
_NOT_JSON = (
    "README: 'a request body that is not JSON, or whose fields have the wrong types, is 400 where tritonserver 2.51"
    " answers 500 (a body that is not JSON, in polystack's words)'"
)
_STRICT = (
    "README: 'nested `data` whose rows differ in length is refused even where its count fits the shape (Triton"
    " flattens it, so the model would run on misaligned rows), and so is a number too large for its float datatype"
    " (Triton runs it as infinity)'"
)
# Triton 24.x's fields, which tritonclient's ModelConfig (polystack's gRPC answer) lacks
_CONFIG = r"\$\.body\.(runtime|(input|output)\[\d+\]\.is_non_linear_format_io)"
_PARAM = (
    "README: 'The request parameters `timeout` (the client's deadline, in microseconds) and `priority` are whole"
    ' numbers of 0 or more, as Triton reads them ...; `1500.0`, `"5"` or `null` is a 400 (`Unable to parse'
    " 'timeout': ...`)'; " + _NOT_JSON[len("README: ") :]
)
_PINNED = (
    "README: 'Triton's `nv_pinned_memory_pool_*` gauges are not, since polystack has no pinned memory pool. A model"
    " whose load failed has no series (tritonserver 2.51 keeps the `nv_inference_request_failure` counters of a"
    " model whose load the rate limiter refused)'"
)
KNOWN: dict[str, tuple[str, str]] = {
    "http live": (r"\$\.body", _OTHERWISE),
    "http ready": (r"\$\.body", _OTHERWISE),
    "http model ready": (r"\$\.body", _OTHERWISE),
    "http model ready unknown model": (r"\$\.body\.(name|ready)", _OTHERWISE),
    "http model metadata mlp": (r"\$\.body\.(inputs|outputs)\[\d+\]\.dim_names", _OTHERWISE),
    "http model metadata multi": (r"\$\.body\.(inputs|outputs)\[\d+\]\.dim_names", _OTHERWISE),
    "http model version metadata": (r"\$\.body\.(inputs|outputs)\[\d+\]\.dim_names", _OTHERWISE),
    **{f"http model config {m}": (_CONFIG, _OTHERWISE) for m in ("mlp", "nobatch", "multi", "pipe", "step1")},
    "http unknown route": (r"\$\.body\.error", _OTHERWISE),
    "http trailing slash": (r".*", _OTHERWISE),
    "http wrong method": (r"\$\.body\.error", _OTHERWISE),
    "http load unknown parameter": (r"\$\.(status|body\.error)", _OTHERWISE),
    "http empty batch": (r"\$\.body\.error", _OTHERWISE),
    "grpc empty batch": (r"\$\.details", _OTHERWISE),
    "http unexpected input": (r"\$\.body\.error", _OTHERWISE),
    "grpc unexpected input": (r"\$\.details", _OTHERWISE),
    "grpc version not a number": (r"\$\.details", _OTHERWISE),
    "http malformed json": (r"\$\.(status|body\.error)", _NOT_JSON),
    "http data count mismatch": (r"\$\.status", _NOT_JSON),
    "http generate not an object": (r"\$\.(status|body\.error)", _NOT_JSON),
    "http shape of the wrong type": (r"\$\.(status|body\.error)", _NOT_JSON),
    "http ragged nested data": (r"\$\.(status|body\.(error|model_name|model_version|outputs))", _STRICT),
    "http value out of fp32's range": (r"\$\.(status|body\.(error|model_name|model_version|outputs))", _STRICT),
    "http server metadata": (r"\$\.body\.(name|version|extensions\.(cuda_shared_memory|generate))", _NAME),
    "grpc server metadata": (r"\$\.response\.(name|version|extensions\.cuda_shared_memory)", _NAME),
    "http stats mlp after refusals": (r".*\.fail\.count", _FAILS),
    "grpc stats mlp after refusals": (r".*\.fail\.count", _FAILS),
    "http model metadata acc": (r"\$\.body\.(inputs|outputs)\[\d+\]\.dim_names", _OTHERWISE),
    **{f"http model config {m}": (_CONFIG, _OTHERWISE) for m in ("acc", "queued")},
    "http timeout null": (r"\$\.(status|body\.error)", _PARAM),
    "http priority null": (r"\$\.(status|body\.error)", _PARAM),
    **{
        f"http metrics nv_ {k}": (
            rf"\$\.{k}\.(nv_pinned_memory_pool_(total|used)_bytes|nv_inference_request_failure\{{model=\"greedy\".*)", _PINNED
        )
        for k in ("families", "series")
    },
    **{
        name: (
            r"\$\.(body|response\.models)\[\d+\]\.reason",
            "README: 'a name whose last load failed, `UNAVAILABLE` with the failure (the load's answer, `load failed for"
            " model 'm': ...`, where Triton's reason is the failure alone, `Invalid argument: ...`)'",
        )
        for name in ("http repository index after failed loads", "grpc repository index")
    },
    **{f"http model config {m}": (_CONFIG, _OTHERWISE) for m in ("repeat", "ens_repeat")},
    **{
        name: (
            r"\$\.status",
            "README: '`generate` takes exactly one response (the final flag alone aside), else Triton's words `generate"
            " expects model to produce exactly 1 response, use generate stream for model that generates various number"
            " of responses` with 400, where Triton answers them with 200'",
        )
        for name in ("http generate decoupled, three responses", "http generate decoupled, no response")
    },
    # the ensemble's outputs in its config's order (Triton's: IDX first); its last answer
    # final where the step's flag came alone before it went (timing decides, on both: then 3 answers, not 4)
    "grpc stream decoupled ensemble": (
        r"\$\.answers\.[^.]+(\[\d+\]\.infer_response\.outputs\[\d+\]\.(name|datatype|data\[\d+\]))?",
        _OTHERWISE + "; 'the answer to a step's last response is the ensemble's final one ... where that response came"
        " with the final flag or the step's flag came alone before the answer went'",
    ),
    "grpc stream decoupled ensemble error, then a good request": (
        r"\$\.answers\.[^.]+\[\d+\]\.infer_response\.outputs\[\d+\]\.(name|datatype|data\[\d+\])",
        _OTHERWISE,
    ),
    **{
        name: (r"\$\.content_type", _OTHERWISE)  # JSON error bodies say so; Triton's 501 says text/plain
        for name in ("http infer decoupled", "http infer decoupled, one response", "http infer decoupled ensemble")
    },
    "http version not a number": (
        r"\$\.(status|body\.error)",
        "README: '`failed to get model version from specified version string 'v': ...` (400: a version that is not"
        " a number)' (tritonserver 2.51's HTTP route takes digits only: 404 Not Found)",
    ),
}

# -- the models ---------------------------------------------------------------------------------------
# Triton's side: one model.py for every model, running the folder's model.onnx
MODEL_PY = """
import json
import os
import sys

sys.path.append({site!r})  # the stub's interpreter does not see the venv that has numpy and onnxruntime
import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.inputs = [i["name"] for i in json.loads(args["model_config"])["input"]]
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        here = os.path.dirname(__file__)
        self.session = ort.InferenceSession(os.path.join(here, "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests):
        answers = []
        for request in requests:
            feed = {{}}
            for name in self.inputs:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    feed[name] = np.from_dlpack(tensor).copy()  # as_numpy() repeats the first element under numpy 2
            ys = self.session.run(self.outputs, feed)
            # from_dlpack: pb_utils.Tensor(name, array) makes an empty tensor of numpy 2 arrays
            tensors = [pb_utils.Tensor.from_dlpack(n, np.ascontiguousarray(y)) for n, y in zip(self.outputs, ys)]
            answers.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return answers
"""

# the sequence model on Triton's side: the sums kept by correlation ID, as polystack's ONNX accumulator keeps them
# in its implicit state (polystack.examples.accumulator_onnx: OUTPUT = (START ? 0 : the sum) + INPUT, ENDED =
# END x READY, ID = CORRID as FP32)
ACC_PY = """
import sys

sys.path.append({site!r})
import numpy as np
import triton_python_backend_utils as pb_utils


def control(request, name):
    return np.from_dlpack(pb_utils.get_input_tensor_by_name(request, name)).copy()


class TritonPythonModel:
    def initialize(self, args):
        self.sums = {{}}

    def execute(self, requests):
        answers = []
        for request in requests:
            x = np.from_dlpack(pb_utils.get_input_tensor_by_name(request, "INPUT")).copy()
            corrid, end = control(request, "CORRID"), control(request, "END") * control(request, "READY")
            key = int(corrid.reshape(-1)[0])
            y = (x if control(request, "START").reshape(-1)[0] else self.sums.get(key, 0) + x).astype(np.float32)
            self.sums[key] = y
            if end.reshape(-1)[0]:
                del self.sums[key]
            tensors = {{"OUTPUT": y, "ENDED": end.astype(np.int32), "ID": corrid.astype(np.float32)}}
            answers.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor.from_dlpack(n, np.ascontiguousarray(v)) for n, v in tensors.items()]))
        return answers
"""

CONFIGS = {
    "mlp": """max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "labels.txt" } ]
dynamic_batching { max_queue_delay_microseconds: 1000 }
instance_group [ { count: 1 kind: KIND_CPU } ]
""",
    "nobatch": """max_batch_size: 0
input [ { name: "x" data_type: TYPE_FP32 dims: [ 2, 3 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 2, 3 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
""",
    "multi": """max_batch_size: 4
input [ { name: "a" data_type: TYPE_INT64 dims: [ 3 ] }, { name: "b" data_type: TYPE_BOOL dims: [ 3 ] } ]
output [ { name: "s" data_type: TYPE_INT64 dims: [ 3 ] }, { name: "n" data_type: TYPE_BOOL dims: [ 3 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
""",
    "step1": """max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
instance_group [ { count: 1 kind: KIND_CPU rate_limiter { resources [ { name: "R" count: 1 } ] priority: 2 } } ]
""",
}
# nobatch's model, needing more of R than --rate-limit-resource gives: its load fails (not loaded at start)
CONFIGS["greedy"] = CONFIGS["nobatch"].replace(
    "instance_group [ { count: 1 kind: KIND_CPU } ]",
    'instance_group [ { count: 1 kind: KIND_CPU rate_limiter { resources [ { name: "R" count: 3 } ] } } ]',
)
CONFIGS["step2"] = CONFIGS["step1"]
CONFIGS["queued"] = """max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]
dynamic_batching {
  max_queue_delay_microseconds: 1000
  priority_levels: 2
  default_priority_level: 2
  default_queue_policy { max_queue_size: 2 }
  priority_queue_policy { key: 1 value: {
    timeout_action: DELAY default_timeout_microseconds: 100000 allow_timeout_override: true max_queue_size: 4 } }
}
instance_group [ { count: 1 kind: KIND_CPU } ]
"""
CONFIGS["acc"] = """max_batch_size: 4
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_FP32 dims: [ 1 ] }, { name: "ENDED" data_type: TYPE_INT32 dims: [ 1 ] },
         { name: "ID" data_type: TYPE_FP32 dims: [ 1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  oldest { max_candidate_sequences: 4 }
  control_input [
    { name: "START", control [ { kind: CONTROL_SEQUENCE_START, int32_false_true: [ 0, 1 ] } ] },
    { name: "END", control [ { kind: CONTROL_SEQUENCE_END, int32_false_true: [ 0, 1 ] } ] },
    { name: "READY", control [ { kind: CONTROL_SEQUENCE_READY, int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID", control [ { kind: CONTROL_SEQUENCE_CORRID, data_type: TYPE_UINT64 } ] }
  ]
  state [ { input_name: "STATE_IN", output_name: "STATE_OUT", data_type: TYPE_FP32, dims: [ 1 ] } ]
}
"""
PIPE = """platform: "ensemble"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
ensemble_scheduling { step [
  { model_name: "step1" model_version: -1 input_map { key: "x" value: "x" } output_map { key: "y" value: "t" } },
  { model_name: "step2" model_version: -1 input_map { key: "x" value: "t" } output_map { key: "y" value: "y" } }
] }
"""
LABELS = "cat\ndog\nbird\n"

# the decoupled model, the same model.py on both (polystack serves it as a Python model): IN INT32 [-1] -> a response
# (OUT [1] = IN[i], IDX [1] = i) for each element, then the final flag alone; request parameter "mode":
# final_on_last (the final flag on the last response), none (the final flag alone), error (one response, then an
# error response with the final flag), raise (an exception from execute, before any response)
REPEAT_PY = """
import json
import sys

sys.path.append({site!r})
import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def response(value, i):
    # from_dlpack: pb_utils.Tensor(name, array) makes an empty tensor of numpy 2 arrays in backend 2.51
    return pb_utils.InferenceResponse(output_tensors=[
        pb_utils.Tensor.from_dlpack("OUT", np.array([value], np.int32)),
        pb_utils.Tensor.from_dlpack("IDX", np.array([i], np.uint32))])


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            mode = json.loads(request.parameters() or "{{}}").get("mode", "")
            values = np.from_dlpack(pb_utils.get_input_tensor_by_name(request, "IN")).reshape(-1).tolist()
            sender = request.get_response_sender()
            if mode == "raise":
                raise RuntimeError("raised in execute")
            if mode == "none":
                sender.send(flags=FINAL)
            elif mode == "error":
                sender.send(response(values[0], 0))
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("boom")), flags=FINAL)
            else:
                for i, value in enumerate(values):
                    last = mode == "final_on_last" and i == len(values) - 1
                    sender.send(response(value, i), flags=FINAL if last else 0)
                if mode != "final_on_last":
                    sender.send(flags=FINAL)
        return None
"""
REPEAT = """max_batch_size: 0
input [ { name: "IN" data_type: TYPE_INT32 dims: [ -1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] }, { name: "IDX" data_type: TYPE_UINT32 dims: [ 1 ] } ]
model_transaction_policy { decoupled: true }
instance_group [ { count: 1 kind: KIND_CPU } ]
"""
# an ensemble of the one step: decoupled too (Triton's says so unasked)
ENS_REPEAT = """platform: "ensemble"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_INT32 dims: [ -1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] }, { name: "IDX" data_type: TYPE_UINT32 dims: [ 1 ] } ]
ensemble_scheduling { step [ { model_name: "repeat" model_version: -1 input_map { key: "IN" value: "IN" }
  output_map { key: "OUT" value: "OUT" } output_map { key: "IDX" value: "IDX" } } ] }
"""


def onnx_models() -> dict[str, Any]:
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper

    def model(nodes: list[Any], inputs: list[Any], outputs: list[Any], weights: Sequence[Any] = ()) -> Any:
        m = h.make_model(h.make_graph(nodes, "g", inputs, outputs, list(weights)), opset_imports=[h.make_opsetid("", 17)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m

    def f32(name: str, dims: list[Any]) -> Any:
        return h.make_tensor_value_info(name, T.FLOAT, dims)

    w = (np.arange(12, dtype=np.float32).reshape(4, 3) - 5) / 10
    b = np.array([0.1, -0.2, 0.3], np.float32)
    scalar = {k: numpy_helper.from_array(np.array(v, np.float32), k) for k, v in (("two", 2), ("one", 1))}
    return {
        "mlp": model([h.make_node("MatMul", ["x", "w"], ["t"]), h.make_node("Add", ["t", "b"], ["y"])],
                     [f32("x", ["batch", 4])], [f32("y", ["batch", 3])],
                     [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]),
        "nobatch": model([h.make_node("Mul", ["x", "two"], ["y"])], [f32("x", [2, 3])], [f32("y", [2, 3])],
                         [scalar["two"]]),
        "multi": model(
            [h.make_node("Cast", ["b"], ["bi"], to=T.INT64), h.make_node("Add", ["a", "bi"], ["s"]),
             h.make_node("Not", ["b"], ["n"])],
            [h.make_tensor_value_info("a", T.INT64, ["batch", 3]), h.make_tensor_value_info("b", T.BOOL, ["batch", 3])],
            [h.make_tensor_value_info("s", T.INT64, ["batch", 3]), h.make_tensor_value_info("n", T.BOOL, ["batch", 3])],
        ),
        "step1": model([h.make_node("Mul", ["x", "two"], ["y"])], [f32("x", ["batch", 4])], [f32("y", ["batch", 4])],
                       [scalar["two"]]),
        "step2": model([h.make_node("Add", ["x", "one"], ["y"])], [f32("x", ["batch", 4])], [f32("y", ["batch", 4])],
                       [scalar["one"]]),
    }  # fmt: skip


def build_repositories(work: Path) -> tuple[Path, Path]:
    """(Triton's repository, polystack's): the same folders, python-backend models on Triton's side."""
    import onnx
    from onnx import TensorProto

    from polystack.examples import accumulator_onnx

    triton, poly = work / "repo-triton", work / "repo-polystack"
    site = sysconfig.get_paths()["purelib"]
    models = onnx_models()
    models["queued"] = models["mlp"]
    models["greedy"] = models["nobatch"]
    for name, model in models.items():
        for repo, head in ((triton, 'backend: "python"\n'), (poly, 'platform: "onnxruntime_onnx"\n')):
            version = repo / name / "1"
            version.mkdir(parents=True)
            onnx.save(model, str(version / "model.onnx"))
            (repo / name / "config.pbtxt").write_text(head + CONFIGS[name])
            if repo is triton:
                (version / "model.py").write_text(MODEL_PY.format(site=site))
            if name == "mlp":
                (repo / name / "labels.txt").write_text(LABELS)
    for repo in (triton, poly):
        (repo / "pipe" / "1").mkdir(parents=True)
        (repo / "pipe" / "config.pbtxt").write_text(PIPE)
    for repo, head in ((triton, 'backend: "python"\n'), (poly, 'platform: "onnxruntime_onnx"\n')):
        (repo / "acc" / "1").mkdir(parents=True)
        (repo / "acc" / "config.pbtxt").write_text(head + CONFIGS["acc"])
    (triton / "acc" / "1" / "model.py").write_text(ACC_PY.format(site=site))
    accumulator_onnx(poly / "acc" / "1" / "model.onnx", TensorProto.UINT64)
    for repo in (triton, poly):  # the decoupled Python model, and an ensemble of it
        (repo / "repeat" / "1").mkdir(parents=True)
        (repo / "repeat" / "1" / "model.py").write_text(REPEAT_PY.format(site=site))
        (repo / "repeat" / "config.pbtxt").write_text('backend: "python"\n' + REPEAT)
        (repo / "ens_repeat" / "1").mkdir(parents=True)
        (repo / "ens_repeat" / "config.pbtxt").write_text(ENS_REPEAT)
    return triton, poly


# -- the servers --------------------------------------------------------------------------------------
@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    http: int
    grpc: int
    metrics: int
    log: Path
    trace: Path  # its trace file (Triton's triton trace mode, both): what the trace cases read
    channel: Any = None
    stub: Any = None


def network(trace: Path) -> tuple[int, int, int, list[str]]:
    http, grpc, metrics = serving.free_port(), serving.free_port(), serving.free_port()
    flags = [
        "--trace-config", f"triton,file={trace}",
        "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1", "--metrics-address", "127.0.0.1",
        "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
        "--model-control-mode", "explicit", *(f"--load-model={m}" for m in LOADED),
        "--rate-limit", "execution_count", "--rate-limit-resource", "R:2",  # step1 and step2 need 1 each
        "--log-verbose", "0", "--log-info", "false",
    ]  # fmt: skip
    return http, grpc, metrics, flags


def launch_triton(triton: Path, backends: Path, repo: Path, work: Path) -> Server:
    """tritonserver with the flags polystack gets too (not waited for; ``ready`` waits)."""
    trace = work / "triton-trace.json"
    http, grpc, metrics, flags = network(trace)
    log = work / "triton.log"
    # a session of its own: its stub processes go with it, and Ctrl-C reaches only this script (which stops it)
    proc = triton_reference.tritonserver(triton, backends, repo, flags, log, start_new_session=True)
    return Server("triton", proc, http, grpc, metrics, log, trace)


# what tritonserver 2.51 has on by default and polystack off (the README says so): system shared memory,
# Triton's metric names beside polystack's own, and Python models (repeat)
POLYSTACK_ONLY = ["--allow-shared-memory", "--triton-metrics", "--allow-python-models"]


def launch_polystack(repo: Path, work: Path) -> Server:
    """`polystack serve` of the repository with the same flags (tritonserver's, which it takes)."""
    trace = work / "polystack-trace.json"
    http, grpc, metrics, flags = network(trace)
    cmd = [str(serving.ROOT / ".venv" / "bin" / "polystack"), "--home", str(work / "home"), "serve",
           "--model-repository", str(repo), *flags, *POLYSTACK_ONLY]  # fmt: skip
    log = work / "polystack.log"
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    return Server("polystack", proc, http, grpc, metrics, log, trace)


def ready(server: Server) -> None:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    for model in LOADED:
        serving.wait_ready(server.http, f"/v2/models/{model}/ready", server.proc, server.log, timeout_s=180)
    server.channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc}")
    grpc.channel_ready_future(server.channel).result(timeout=60)
    server.stub = service_pb2_grpc.GRPCInferenceServiceStub(server.channel)


def shut(server: Server) -> None:
    if server.channel is not None:
        server.channel.close()
    if server.name == "triton":  # what it left (its stubs, by its group, and their shared memory) goes with it
        triton_reference.stop_triton(server.proc, group=True)
        return
    serving.stop(server.proc)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(server.proc.pid, signal.SIGKILL)


# -- requests and their normalized outcomes ----------------------------------------------------------
DTYPES = {"FP32": "<f4", "FP64": "<f8", "FP16": "<f2", "INT64": "<i8", "INT32": "<i4", "INT16": "<i2", "INT8": "i1",
          "UINT64": "<u8", "UINT32": "<u4", "UINT16": "<u2", "UINT8": "u1", "BOOL": "?"}  # fmt: skip


def decode_tensor(datatype: str, raw: bytes) -> list[Any]:
    """A binary tensor's elements, flat (BYTES: each element's text)."""
    if datatype == "BYTES":
        items, at = [], 0
        while at + 4 <= len(raw):
            (n,) = struct.unpack_from("<I", raw, at)
            items.append(raw[at + 4 : at + 4 + n].decode(errors="replace"))
            at += 4 + n
        return items
    if datatype not in DTYPES or len(raw) % np.dtype(DTYPES[datatype]).itemsize:
        return [f"<{len(raw)} bytes of {datatype}>"]
    return list(np.frombuffer(raw, DTYPES[datatype]).tolist())


def scrub(value: Any) -> Any:
    """``value`` without durations and timestamps."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def rest(server: Server, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """One request on a fresh connection: {"status", "body"}; a body with binary tensors has them decoded into
    each output's "data"."""
    data: bytes | None
    sent = {"Content-Type": "application/json"} if isinstance(body, dict) else {}
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    sent.update(headers or {})
    conn = http.client.HTTPConnection("127.0.0.1", server.http, timeout=60)
    try:
        conn.request(method, path, body=data, headers=sent)
        resp = conn.getresponse()
        raw, header = resp.read(), resp.getheader("Inference-Header-Content-Length")
    finally:
        conn.close()
    return {"status": resp.status, "body": scrub(parse_body(raw, header))}


def parse_body(raw: bytes, header: str | None) -> Any:
    binary = b""
    if header is not None:
        raw, binary = raw[: int(header)], raw[int(header) :]
    if not raw:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")
    at = 0
    for out in doc.get("outputs", []) if isinstance(doc, dict) else []:
        size = (out.get("parameters") or {}).get("binary_data_size")
        if isinstance(size, int):
            out["data"] = decode_tensor(out.get("datatype", ""), binary[at : at + size])
            at += size
    return doc


def rpc(server: Server, method: str, request: Any) -> dict[str, Any]:
    """One gRPC call: {"code", "details"} or {"code": "OK", "fields": the response's set fields, "response"}."""
    import grpc

    try:
        resp = getattr(server.stub, method)(request, timeout=60)
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details()}
    return {"code": "OK", "fields": sorted(f.name for f, _ in resp.ListFields()), "response": as_dict(resp)}


def as_dict(message: Any) -> Any:
    """A response message as JSON, an infer response's raw tensors decoded into its outputs' "data"."""
    from google.protobuf.json_format import MessageToDict

    doc = MessageToDict(message, preserving_proto_field_name=True)
    infer = message if hasattr(message, "raw_output_contents") else getattr(message, "infer_response", None)
    if infer is not None:
        part = doc if infer is message else doc.get("infer_response", {})
        for out, raw in zip(part.get("outputs", []), infer.raw_output_contents, strict=False):
            out["data"] = decode_tensor(out.get("datatype", ""), raw)
        part.pop("raw_output_contents", None)
    return json.loads(json.dumps(scrub(doc), sort_keys=True))  # protobuf maps come in any order


def pb() -> Any:
    from tritonclient.grpc import service_pb2

    return service_pb2


def infer_request(model: str, inputs: list[tuple[str, str, list[int], str, list[Any]]], *, raw: list[bytes] | None = None,
                  outputs: Sequence[tuple[str, dict[str, Any]]] = (), params: dict[str, Any] | None = None,
                  version: str = "", id: str = "") -> Any:  # fmt: skip
    """A ModelInferRequest: inputs as (name, datatype, shape, contents field, values)."""
    req = pb().ModelInferRequest(model_name=model, model_version=version, id=id)
    for name, datatype, shape, kind, values in inputs:
        t = req.inputs.add(name=name, datatype=datatype, shape=shape)
        if kind:
            getattr(t.contents, kind).extend(values)
    if raw is not None:
        req.raw_input_contents.extend(raw)
    for name, oparams in outputs:
        o = req.outputs.add(name=name)
        for k, v in oparams.items():
            set_param(o.parameters[k], v)
    for k, v in (params or {}).items():
        set_param(req.parameters[k], v)
    return req


def set_param(p: Any, v: Any) -> None:
    if isinstance(v, bool):
        p.bool_param = v
    elif isinstance(v, int):
        p.int64_param = v
    else:
        p.string_param = v


def without_backend(outcome: dict[str, Any], *where: str) -> dict[str, Any]:
    """``outcome`` without the fields naming the backend, in its body (HTTP) or response (gRPC) at ``where``."""
    doc = outcome.get("body") if "status" in outcome else outcome.get("response")
    for key in where:
        doc = doc.get(key) if isinstance(doc, dict) else None
    if isinstance(doc, dict):
        for k in BACKEND_FIELDS:
            doc.pop(k, None)
    if "fields" in outcome and not where:
        outcome["fields"] = [f for f in outcome["fields"] if f not in BACKEND_FIELDS]
    return outcome


def sorted_index(outcome: dict[str, Any]) -> dict[str, Any]:
    """A repository index in name order (the entries' order is not the protocol's)."""
    body = outcome.get("body") if "status" in outcome else (outcome.get("response") or {}).get("models")
    if isinstance(body, list):
        body.sort(key=lambda e: (str(e.get("name")), str(e.get("version"))))
    return outcome


# -- the corpus ---------------------------------------------------------------------------------------
CaseFn = Callable[[Server], Any]
CASES: dict[str, CaseFn] = {}


def case(name: str) -> Callable[[CaseFn], CaseFn]:
    def register(fn: CaseFn) -> CaseFn:
        assert name not in CASES, name
        CASES[name] = fn
        return fn

    return register


def http_case(name: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> None:
    case(name)(lambda s: rest(s, method, path, body, headers))


def grpc_case(name: str, method: str, request: Callable[[], Any]) -> None:
    case(name)(lambda s: rpc(s, method, request()))


X = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]
XF = [v for row in X for v in row]
X_RAW = np.asarray(X, "<f4").tobytes()
A, B = [[1, 2, 3], [-4, 5, 60]], [[True, False, True], [False, False, True]]
A_RAW, B_RAW = np.asarray(A, "<i8").tobytes(), np.asarray(B, "?").tobytes()


def x_in(shape: Sequence[int] = (2, 4), data: list[Any] | None = None, datatype: str = "FP32", name: str = "x") -> dict[str, Any]:
    return {"name": name, "shape": list(shape), "datatype": datatype, "data": XF if data is None else data}


def mlp_body(**extra: Any) -> dict[str, Any]:
    return {"inputs": [x_in()], **extra}


MULTI = {"inputs": [{"name": "a", "shape": [2, 3], "datatype": "INT64", "data": A},
                    {"name": "b", "shape": [2, 3], "datatype": "BOOL", "data": B}]}  # fmt: skip
INFER = "/v2/models/mlp/infer"

# health, metadata, config
http_case("http live", "GET", "/v2/health/live")
http_case("http ready", "GET", "/v2/health/ready")


@case("http server metadata")
def _http_server_metadata(s: Server) -> Any:
    out = rest(s, "GET", "/v2")
    if isinstance(out["body"], dict) and isinstance(out["body"].get("extensions"), list):
        out["body"]["extensions"] = dict.fromkeys(out["body"]["extensions"], True)  # one difference per extension
    return out


def http_backend_case(name: str, path: str) -> None:
    """A GET of a python-backend model's metadata or config, the fields naming its backend left out."""
    case(name)(lambda s: without_backend(rest(s, "GET", path)))


def grpc_backend_case(name: str, method: str, request: Callable[[], Any], *where: str) -> None:
    case(name)(lambda s: without_backend(rpc(s, method, request()), *where))


for _m in ("mlp", "nobatch", "multi"):
    http_backend_case(f"http model metadata {_m}", f"/v2/models/{_m}")
http_case("http model metadata pipe", "GET", "/v2/models/pipe")
http_backend_case("http model version metadata", "/v2/models/mlp/versions/1")
http_case("http model metadata unknown version", "GET", "/v2/models/mlp/versions/2")
http_case("http model metadata unknown model", "GET", "/v2/models/nope")
http_case("http model ready", "GET", "/v2/models/mlp/ready")
http_case("http model ready unknown model", "GET", "/v2/models/nope/ready")
for _m in ("mlp", "nobatch", "multi", "step1"):  # step1: an instance group's rate_limiter
    http_backend_case(f"http model config {_m}", f"/v2/models/{_m}/config")
http_case("http model config pipe", "GET", "/v2/models/pipe/config")
http_case("http model config unknown model", "GET", "/v2/models/nope/config")
http_backend_case("http model metadata acc", "/v2/models/acc")
http_backend_case("http model config acc", "/v2/models/acc/config")  # sequence batching
http_backend_case("http model config queued", "/v2/models/queued/config")  # queue policies and priority levels

grpc_case("grpc live", "ServerLive", lambda: pb().ServerLiveRequest())
grpc_case("grpc ready", "ServerReady", lambda: pb().ServerReadyRequest())


@case("grpc server metadata")
def _grpc_server_metadata(s: Server) -> Any:
    out = rpc(s, "ServerMetadata", pb().ServerMetadataRequest())
    if isinstance(out.get("response", {}).get("extensions"), list):
        out["response"]["extensions"] = dict.fromkeys(out["response"]["extensions"], True)
    return out


for _m in ("mlp", "nobatch", "multi"):
    grpc_backend_case(f"grpc model metadata {_m}", "ModelMetadata", partial(lambda m: pb().ModelMetadataRequest(name=m), _m))
grpc_case("grpc model metadata pipe", "ModelMetadata", lambda: pb().ModelMetadataRequest(name="pipe"))
grpc_case("grpc model metadata unknown model", "ModelMetadata", lambda: pb().ModelMetadataRequest(name="nope"))
grpc_case("grpc model metadata unknown version", "ModelMetadata",
          lambda: pb().ModelMetadataRequest(name="mlp", version="2"))  # fmt: skip
grpc_case("grpc model ready", "ModelReady", lambda: pb().ModelReadyRequest(name="mlp"))
grpc_case("grpc model ready unknown model", "ModelReady", lambda: pb().ModelReadyRequest(name="nope"))
for _m in ("mlp", "nobatch", "multi", "step1"):
    grpc_backend_case(f"grpc model config {_m}", "ModelConfig", partial(lambda m: pb().ModelConfigRequest(name=m), _m), "config")
grpc_case("grpc model config pipe", "ModelConfig", lambda: pb().ModelConfigRequest(name="pipe"))
grpc_case("grpc model config unknown model", "ModelConfig", lambda: pb().ModelConfigRequest(name="nope"))
grpc_backend_case("grpc model metadata acc", "ModelMetadata", lambda: pb().ModelMetadataRequest(name="acc"))
grpc_backend_case("grpc model config acc", "ModelConfig", lambda: pb().ModelConfigRequest(name="acc"), "config")
grpc_backend_case("grpc model config queued", "ModelConfig", lambda: pb().ModelConfigRequest(name="queued"), "config")

# inference that succeeds
http_case("http infer json", "POST", INFER, mlp_body())
http_case("http infer version 1", "POST", "/v2/models/mlp/versions/1/infer", mlp_body())
http_case("http infer id echo", "POST", INFER, mlp_body(id="req-7"))
http_case("http infer binary output", "POST", INFER, mlp_body(parameters={"binary_data_output": True}))
http_case("http infer requested binary output", "POST", INFER,
          mlp_body(outputs=[{"name": "y", "parameters": {"binary_data": True}}]))  # fmt: skip


@case("http infer binary input")
def _http_binary_input(s: Server) -> Any:
    head = json.dumps({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
                                   "parameters": {"binary_data_size": len(X_RAW)}}]}).encode()  # fmt: skip
    return rest(s, "POST", INFER, head + X_RAW, {"Inference-Header-Content-Length": str(len(head)),
                                                 "Content-Type": "application/octet-stream"})  # fmt: skip


http_case("http infer classification", "POST", INFER,
          mlp_body(outputs=[{"name": "y", "parameters": {"classification": 2}}]))  # fmt: skip
http_case("http infer nobatch", "POST", "/v2/models/nobatch/infer",
          {"inputs": [x_in([2, 3], [1, 2, 3, 4, 5, 6])]})  # fmt: skip
http_case("http infer multi", "POST", "/v2/models/multi/infer", MULTI)
http_case("http infer multi requested output", "POST", "/v2/models/multi/infer", {**MULTI, "outputs": [{"name": "n"}]})
http_case("http infer multi binary output", "POST", "/v2/models/multi/infer",
          {**MULTI, "parameters": {"binary_data_output": True}})  # fmt: skip
http_case("http infer ensemble", "POST", "/v2/models/pipe/infer", mlp_body())
http_case("http infer content-type text/plain", "POST", INFER, json.dumps(mlp_body()).encode(),
          {"Content-Type": "text/plain"})  # fmt: skip

grpc_case("grpc infer typed", "ModelInfer", lambda: infer_request("mlp", [("x", "FP32", [2, 4], "fp32_contents", XF)]))
grpc_case("grpc infer raw", "ModelInfer", lambda: infer_request("mlp", [("x", "FP32", [2, 4], "", [])], raw=[X_RAW]))
grpc_case("grpc infer id echo", "ModelInfer",
          lambda: infer_request("mlp", [("x", "FP32", [2, 4], "", [])], raw=[X_RAW], id="req-7"))  # fmt: skip
grpc_case("grpc infer classification", "ModelInfer",
          lambda: infer_request("mlp", [("x", "FP32", [2, 4], "", [])], raw=[X_RAW],
                                outputs=[("y", {"classification": 2})]))  # fmt: skip
grpc_case("grpc infer nobatch", "ModelInfer",
          lambda: infer_request("nobatch", [("x", "FP32", [2, 3], "fp32_contents", [1, 2, 3, 4, 5, 6])]))  # fmt: skip
grpc_case("grpc infer multi", "ModelInfer",
          lambda: infer_request("multi", [("a", "INT64", [2, 3], "", []), ("b", "BOOL", [2, 3], "", [])],
                                raw=[A_RAW, B_RAW]))  # fmt: skip
grpc_case("grpc infer multi typed", "ModelInfer",
          lambda: infer_request("multi", [("a", "INT64", [2, 3], "int64_contents", [v for row in A for v in row]),
                                          ("b", "BOOL", [2, 3], "bool_contents", [v for row in B for v in row])]))  # fmt: skip
grpc_case("grpc infer multi requested output", "ModelInfer",
          lambda: infer_request("multi", [("a", "INT64", [2, 3], "", []), ("b", "BOOL", [2, 3], "", [])],
                                raw=[A_RAW, B_RAW], outputs=[("n", {})]))  # fmt: skip
grpc_case("grpc infer ensemble", "ModelInfer",
          lambda: infer_request("pipe", [("x", "FP32", [2, 4], "", [])], raw=[X_RAW]))  # fmt: skip

# a sequence (acc sums its sequence's values: 1, 3, 6) and a priority (queued has two levels)
ACC_INFER = "/v2/models/acc/infer"


def acc_body(value: float = 1.0, rows: int = 1, **params: Any) -> dict[str, Any]:
    """acc's request of ``rows`` rows of ``value``, with these request parameters."""
    body: dict[str, Any] = {"inputs": [{"name": "INPUT", "shape": [rows, 1], "datatype": "FP32", "data": [value] * rows}]}
    return {**body, "parameters": params} if params else body


def acc_request(value: float = 1.0, rows: int = 1, **params: Any) -> Any:
    return infer_request("acc", [("INPUT", "FP32", [rows, 1], "fp32_contents", [value] * rows)], params=params)


@case("http sequence start, middle and end")
def _http_sequence(s: Server) -> Any:
    return [rest(s, "POST", ACC_INFER, body) for body in (acc_body(1.0, sequence_id=101, sequence_start=True),
            acc_body(2.0, sequence_id=101), acc_body(3.0, sequence_id=101, sequence_end=True))]  # fmt: skip


@case("grpc sequence start, middle and end")
def _grpc_sequence(s: Server) -> Any:
    return [rpc(s, "ModelInfer", req) for req in (acc_request(1.0, sequence_id=202, sequence_start=True),
            acc_request(2.0, sequence_id=202), acc_request(3.0, sequence_id=202, sequence_end=True))]  # fmt: skip


QUEUED_INFER = "/v2/models/queued/infer"
http_case("http infer priority 1", "POST", QUEUED_INFER, mlp_body(parameters={"priority": 1}))


@case("grpc infer priority 1 as uint64_param")
def _grpc_priority(s: Server) -> Any:
    req = infer_request("queued", [_X_RAW_IN], raw=[X_RAW])
    req.parameters["priority"].uint64_param = 1  # as tritonclient sends it
    return rpc(s, "ModelInfer", req)


# statistics, before any request fails (polystack counts failures, Triton does not)
http_case("http stats mlp", "GET", "/v2/models/mlp/stats")
http_case("http stats pipe", "GET", "/v2/models/pipe/stats")
http_case("http stats unknown model", "GET", "/v2/models/nope/stats")
grpc_case("grpc stats mlp", "ModelStatistics", lambda: pb().ModelStatisticsRequest(name="mlp"))
grpc_case("grpc stats unknown model", "ModelStatistics", lambda: pb().ModelStatisticsRequest(name="nope"))

# inference that is refused
http_case("http malformed json", "POST", INFER, b'{"inputs": [', {"Content-Type": "application/json"})
http_case("http missing input", "POST", "/v2/models/multi/infer", {"inputs": MULTI["inputs"][:1]})
http_case("http unexpected input", "POST", INFER, {"inputs": [x_in(), x_in(name="z")]})
http_case("http duplicate input", "POST", INFER, {"inputs": [x_in(), x_in()]})
http_case("http wrong datatype", "POST", INFER, {"inputs": [x_in(datatype="INT32", data=[1] * 8)]})
http_case("http shape mismatch", "POST", INFER, {"inputs": [x_in([2, 3], [1.0] * 6)]})
http_case("http data count mismatch", "POST", INFER, {"inputs": [x_in([2, 4], [1.0] * 7)]})
http_case("http shape of the wrong type", "POST", INFER, {"inputs": [x_in([2, 4.0])]})
# these two run on Triton and are refused by polystack (documented): sent to nobatch, whose statistics are not compared
# after the refusals, so that mlp's successes stay the same on both
NOBATCH_INFER = "/v2/models/nobatch/infer"
http_case("http ragged nested data", "POST", NOBATCH_INFER, {"inputs": [x_in([2, 3], [XF[:2], XF[2:6]])]})
http_case("http value out of fp32's range", "POST", NOBATCH_INFER, {"inputs": [x_in([2, 3], [1e300] * 6)]})
http_case("http datatype in lower case", "POST", INFER, {"inputs": [x_in(datatype="fp32")]})
http_case("http nobatch shape mismatch", "POST", "/v2/models/nobatch/infer", {"inputs": [x_in([1, 2, 3], [1.0] * 6)]})
http_case("http batch over max", "POST", INFER, {"inputs": [x_in([9, 4], [1.0] * 36)]})
http_case("http empty batch", "POST", INFER, {"inputs": [x_in([0, 4], [])]})
http_case("http unknown model", "POST", "/v2/models/nope/infer", mlp_body())
http_case("http unknown version", "POST", "/v2/models/mlp/versions/2/infer", mlp_body())
http_case("http version not a number", "POST", "/v2/models/mlp/versions/abc/infer", mlp_body())
http_case("http duplicate requested output", "POST", INFER, mlp_body(outputs=[{"name": "y"}, {"name": "y"}]))
http_case("http unknown requested output", "POST", INFER, mlp_body(outputs=[{"name": "nope"}]))
http_case("http classification 0", "POST", INFER,
          mlp_body(outputs=[{"name": "y", "parameters": {"classification": 0}}]))  # fmt: skip
http_case("http empty id", "POST", INFER, mlp_body(id=""))
http_case("http sequence_id to a stateless model", "POST", INFER,
          mlp_body(parameters={"sequence_id": 5, "sequence_start": True}))  # fmt: skip


def _binary_x(s: Server, header: Callable[[int], str]) -> Any:
    """The binary request of ``x`` with its Inference-Header-Content-Length written by ``header`` from the JSON's length."""
    head = json.dumps({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 32}}]}).encode()  # fmt: skip
    return rest(s, "POST", INFER, head + X_RAW, {"Inference-Header-Content-Length": header(len(head))})


case("http header length with a plus sign")(partial(_binary_x, header=lambda n: f"+{n}"))
case("http header length negative")(partial(_binary_x, header=lambda n: "-5"))
case("http header length past the body")(partial(_binary_x, header=lambda n: str(n + 100)))


@case("http binary size mismatch")
def _http_binary_short(s: Server) -> Any:
    head = json.dumps({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 12}}]}).encode()  # fmt: skip
    return rest(s, "POST", INFER, head + X_RAW[:12], {"Inference-Header-Content-Length": str(len(head))})


_X_RAW_IN: tuple[str, str, list[int], str, list[Any]] = ("x", "FP32", [2, 4], "", [])
grpc_case("grpc missing input", "ModelInfer", lambda: infer_request("multi", [("a", "INT64", [2, 3], "", [])], raw=[A_RAW]))
grpc_case("grpc unexpected input", "ModelInfer",
          lambda: infer_request("mlp", [_X_RAW_IN, ("z", "FP32", [2, 4], "", [])], raw=[X_RAW, X_RAW]))  # fmt: skip
grpc_case("grpc wrong datatype", "ModelInfer",
          lambda: infer_request("mlp", [("x", "INT32", [2, 4], "int_contents", [1] * 8)]))  # fmt: skip
grpc_case("grpc shape mismatch", "ModelInfer", lambda: infer_request("mlp", [("x", "FP32", [2, 3], "", [])], raw=[X_RAW[:24]]))
grpc_case("grpc byte size mismatch", "ModelInfer", lambda: infer_request("mlp", [_X_RAW_IN], raw=[X_RAW[:28]]))
grpc_case("grpc batch over max", "ModelInfer",
          lambda: infer_request("mlp", [("x", "FP32", [9, 4], "fp32_contents", [1.0] * 36)]))  # fmt: skip
grpc_case("grpc empty batch", "ModelInfer", lambda: infer_request("mlp", [("x", "FP32", [0, 4], "", [])], raw=[b""]))
grpc_case("grpc unknown model", "ModelInfer", lambda: infer_request("nope", [_X_RAW_IN], raw=[X_RAW]))
grpc_case("grpc unknown version", "ModelInfer", lambda: infer_request("mlp", [_X_RAW_IN], raw=[X_RAW], version="2"))
grpc_case("grpc version not a number", "ModelInfer",
          lambda: infer_request("mlp", [_X_RAW_IN], raw=[X_RAW], version="abc"))  # fmt: skip
grpc_case("grpc duplicate requested output", "ModelInfer",
          lambda: infer_request("mlp", [_X_RAW_IN], raw=[X_RAW], outputs=[("y", {}), ("y", {})]))  # fmt: skip
grpc_case("grpc unknown requested output", "ModelInfer",
          lambda: infer_request("mlp", [_X_RAW_IN], raw=[X_RAW], outputs=[("nope", {})]))  # fmt: skip
grpc_case("grpc sequence_id to a stateless model", "ModelInfer",
          lambda: infer_request("mlp", [_X_RAW_IN], raw=[X_RAW], params={"sequence_id": 5, "sequence_start": True}))
grpc_case("grpc extra raw_input_contents", "ModelInfer", lambda: infer_request("mlp", [_X_RAW_IN], raw=[X_RAW, X_RAW]))
grpc_case("grpc missing raw_input_contents", "ModelInfer",
          lambda: infer_request("multi", [("a", "INT64", [2, 3], "", []), ("b", "BOOL", [2, 3], "", [])],
                                raw=[A_RAW]))  # fmt: skip
grpc_case("grpc raw and typed contents", "ModelInfer",
          lambda: infer_request("mlp", [("x", "FP32", [2, 4], "fp32_contents", XF)], raw=[X_RAW]))  # fmt: skip
grpc_case("grpc data in the wrong contents field", "ModelInfer",
          lambda: infer_request("mlp", [("x", "FP32", [2, 4], "int_contents", [1] * 8)]))  # fmt: skip

# a sequence model's refusals: no correlation ID, a first request without START, a batch of 2
http_case("http sequence without an ID", "POST", ACC_INFER, acc_body())
http_case("http sequence without START first", "POST", ACC_INFER, acc_body(sequence_id=103))
http_case("http sequence batch of 2", "POST", ACC_INFER, acc_body(rows=2, sequence_id=104, sequence_start=True))
grpc_case("grpc sequence without an ID", "ModelInfer", lambda: acc_request())
grpc_case("grpc sequence without START first", "ModelInfer", lambda: acc_request(sequence_id=203))
grpc_case("grpc sequence batch of 2", "ModelInfer", lambda: acc_request(rows=2, sequence_id=204, sequence_start=True))

# the queue's request parameters of the wrong type (to queued, whose statistics are not compared)
http_case("http timeout null", "POST", QUEUED_INFER, mlp_body(parameters={"timeout": None}))
http_case("http priority null", "POST", QUEUED_INFER, mlp_body(parameters={"priority": None}))


@case("grpc priority of the wrong type")
def _grpc_priority_double(s: Server) -> Any:
    req = infer_request("queued", [_X_RAW_IN], raw=[X_RAW])
    req.parameters["priority"].double_param = 1.0
    return rpc(s, "ModelInfer", req)


grpc_case("grpc priority negative", "ModelInfer",
          lambda: infer_request("queued", [_X_RAW_IN], raw=[X_RAW], params={"priority": -1}))  # fmt: skip




@case("grpc stream")
def _grpc_stream(s: Server) -> Any:
    """A stream of a request that succeeds and one that is refused."""
    import grpc

    requests = [infer_request("mlp", [_X_RAW_IN], raw=[X_RAW], id="s1"),
                infer_request("mlp", [("x", "FP32", [2, 3], "", [])], raw=[X_RAW[:24]], id="s2")]  # fmt: skip
    answers: list[Any] = []
    try:
        for answer in s.stub.ModelStreamInfer(iter(requests), timeout=60):
            answers.append(as_dict(answer))
    except grpc.RpcError as e:
        answers.append({"code": e.code().name, "details": e.details()})
    return answers


# statistics again: polystack counts the refusals as failures, Triton none
http_case("http stats mlp after refusals", "GET", "/v2/models/mlp/stats")
grpc_case("grpc stats mlp after refusals", "ModelStatistics", lambda: pb().ModelStatisticsRequest(name="mlp"))

# routes
http_case("http unknown route", "GET", "/v2/nope")
http_case("http trailing slash", "GET", "/v2/models/mlp/")
http_case("http wrong method", "DELETE", "/v2/health/live")

# the generate extension (HTTP only; tritonserver 2.51 reads any model's inputs from it, not text models' alone)
GENERATE = "/v2/models/mlp/generate"
http_case("http generate", "POST", GENERATE, {"x": XF[:4]})
http_case("http generate two rows", "POST", GENERATE, {"x": XF})
http_case("http generate id and parameters", "POST", GENERATE, {"x": XF[:4], "id": "g1", "parameters": {"top_k": 5}})
http_case("http generate an input in parameters", "POST", "/v2/models/multi/generate",
          {"a": A[0], "parameters": {"b": B[0]}})  # fmt: skip
http_case("http generate a shape that does not fit", "POST", GENERATE, {"x": XF[:6]})
http_case("http generate nested values", "POST", GENERATE, {"x": [XF[:4]]})
http_case("http generate a missing input", "POST", "/v2/models/multi/generate", {"a": A[0]})
http_case("http generate a parameter that is a list", "POST", GENERATE, {"x": XF[:4], "stop": [1, 2]})
http_case("http generate a triton_ parameter", "POST", GENERATE, {"x": XF[:4], "triton_x": 1})
http_case("http generate unknown model", "POST", "/v2/models/nope/generate", {"x": XF[:4]})
http_case("http generate nobatch", "POST", "/v2/models/nobatch/generate", {"x": XF[:6]})
http_case("http generate ensemble", "POST", "/v2/models/pipe/generate", {"x": XF[:4]})
http_case("http generate not an object", "POST", GENERATE, b"[1]", {"Content-Type": "application/json"})
http_case("http generate_stream", "POST", "/v2/models/mlp/generate_stream", {"x": XF[:4]})
http_case("http generate_stream a missing input", "POST", "/v2/models/multi/generate_stream", {"a": A[0]})

# decoupled: repeat (a Python model answering each element of IN apart, then the final flag) and ens_repeat (an
# ensemble of it, decoupled too). Only gRPC's stream and HTTP's generate(_stream) serve them; infer refuses them.
TRACEBACK_FRAME = re.compile(r"\n  \S*/([^/\s]+\(\d+\): )")  # Triton's "At:" lines name the file in its folder


def no_paths(text: Any) -> Any:
    """An error's text with its traceback's files named without their folder (the temporary repository's)."""
    return TRACEBACK_FRAME.sub(r"\n  <repository>/\1", text) if isinstance(text, str) else text


def repeat_request(values: Sequence[int], id: str = "", mode: str = "", empty_final: bool = False,
                   model: str = "repeat") -> Any:  # fmt: skip
    """A ModelInferRequest of IN = ``values`` (raw), the mode as a request parameter, the empty final asked for."""
    params: dict[str, Any] = {"mode": mode} if mode else {}
    if empty_final:
        params["triton_enable_empty_final_response"] = True
    raw = [np.asarray(values, "<i4").tobytes()]
    return infer_request(model, [("IN", "INT32", [len(values)], "", [])], raw=raw, params=params, id=id)


def stream(s: Server, requests: list[Any]) -> Any:
    """The answers of one ModelStreamInfer stream of ``requests``, by request id (each id's in the order they came;
    the order across requests is not compared), then how the stream ended."""
    import grpc

    by_id: dict[str, list[Any]] = {}
    end: dict[str, Any] = {"code": "OK"}
    try:
        for answer in s.stub.ModelStreamInfer(iter(requests), timeout=60):
            doc = as_dict(answer)
            if "error_message" in doc:
                doc["error_message"] = no_paths(doc["error_message"])
            by_id.setdefault(answer.infer_response.id, []).append(doc)
    except grpc.RpcError as e:
        end = {"code": e.code().name, "details": e.details()}
    return {"answers": by_id, "end": end}


def rest_typed(s: Server, method: str, path: str, body: Any) -> dict[str, Any]:
    """``rest`` with the answer's Content-Type, a Server-Sent Events body as its events (each data line's JSON;
    anything else verbatim), error texts without their traceback's folders."""
    conn = http.client.HTTPConnection("127.0.0.1", s.http, timeout=60)
    try:
        conn.request(method, path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw, ctype = resp.read(), resp.getheader("Content-Type")
    finally:
        conn.close()
    out: dict[str, Any] = {"status": resp.status, "content_type": ctype}
    if (ctype or "").startswith("text/event-stream"):
        events: list[Any] = []
        for block in raw.decode(errors="replace").split("\n\n"):
            if not block:
                continue
            if block.startswith("data: ") and "\n" not in block:
                try:
                    event = json.loads(block[len("data: ") :])
                except ValueError:
                    event = block
            else:
                event = block
            if isinstance(event, dict) and "error" in event:
                event["error"] = no_paths(event["error"])
            events.append(event)
        out["events"] = events
    else:
        out["body"] = parse_body(raw, None)
        if isinstance(out["body"], dict) and "error" in out["body"]:
            out["body"]["error"] = no_paths(out["body"]["error"])
    return out


for _m in ("repeat", "ens_repeat"):
    http_case(f"http model metadata {_m}", "GET", f"/v2/models/{_m}")
    http_case(f"http model config {_m}", "GET", f"/v2/models/{_m}/config")
    grpc_case(f"grpc model config {_m}", "ModelConfig", partial(lambda m: pb().ModelConfigRequest(name=m), _m))

case("grpc stream decoupled")(lambda s: stream(s, [repeat_request([4, 5, 6], id="d1")]))
case("grpc stream decoupled with the empty final")(
    lambda s: stream(s, [repeat_request([4, 5, 6], id="d2", empty_final=True)]))  # fmt: skip
case("grpc stream decoupled without an id, with the empty final")(
    lambda s: stream(s, [repeat_request([4, 5, 6], empty_final=True)]))  # fmt: skip
for _mode in ("final_on_last", "none", "error", "raise"):  # each with and without the empty final, then a good request
    case(f"grpc stream decoupled {_mode}, then a good request")(partial(lambda s, mode: stream(s, [
        repeat_request([4, 5, 6], id=f"{mode}-0", mode=mode),
        repeat_request([4, 5, 6], id=f"{mode}-1", mode=mode, empty_final=True),
        repeat_request([9], id="after", empty_final=True)]), mode=_mode))  # fmt: skip
grpc_case("grpc infer decoupled", "ModelInfer", lambda: repeat_request([4, 5, 6], id="u1"))
grpc_case("grpc infer decoupled, one response", "ModelInfer",
          lambda: repeat_request([7], id="u2", mode="final_on_last"))  # fmt: skip
grpc_case("grpc infer decoupled ensemble", "ModelInfer", lambda: repeat_request([4, 5, 6], model="ens_repeat"))


def _IN(values: list[int]) -> dict[str, Any]:
    return {"inputs": [{"name": "IN", "shape": [len(values)], "datatype": "INT32", "data": values}]}


case("http infer decoupled")(lambda s: rest_typed(s, "POST", "/v2/models/repeat/infer", _IN([4, 5, 6])))
case("http infer decoupled, one response")(
    lambda s: rest_typed(s, "POST", "/v2/models/repeat/infer", {**_IN([7]), "parameters": {"mode": "final_on_last"}}))
case("http infer decoupled ensemble")(lambda s: rest_typed(s, "POST", "/v2/models/ens_repeat/infer", _IN([4, 5, 6])))
_GEN, _GEN_STREAM = "/v2/models/repeat/generate", "/v2/models/repeat/generate_stream"
case("http generate decoupled, one response")(lambda s: rest_typed(s, "POST", _GEN, {"IN": [7]}))
case("http generate decoupled, one response with the final flag")(
    lambda s: rest_typed(s, "POST", _GEN, {"IN": [7], "mode": "final_on_last"}))  # fmt: skip
case("http generate decoupled, three responses")(lambda s: rest_typed(s, "POST", _GEN, {"IN": [4, 5, 6]}))
case("http generate decoupled, no response")(lambda s: rest_typed(s, "POST", _GEN, {"IN": [4, 5, 6], "mode": "none"}))
case("http generate decoupled raise")(lambda s: rest_typed(s, "POST", _GEN, {"IN": [4, 5, 6], "mode": "raise"}))
case("http generate_stream decoupled")(lambda s: rest_typed(s, "POST", _GEN_STREAM, {"IN": [4, 5, 6]}))
case("http generate_stream decoupled final_on_last")(
    lambda s: rest_typed(s, "POST", _GEN_STREAM, {"IN": [4, 5, 6], "mode": "final_on_last"}))  # fmt: skip
case("http generate_stream decoupled error")(
    lambda s: rest_typed(s, "POST", _GEN_STREAM, {"IN": [4, 5, 6], "parameters": {"mode": "error"}}))  # fmt: skip
case("http generate_stream decoupled none")(
    lambda s: rest_typed(s, "POST", _GEN_STREAM, {"IN": [4, 5, 6], "mode": "none"}))  # fmt: skip
case("http generate_stream decoupled raise")(
    lambda s: rest_typed(s, "POST", _GEN_STREAM, {"IN": [4, 5, 6], "mode": "raise"}))  # fmt: skip
case("grpc stream decoupled ensemble")(
    lambda s: stream(s, [repeat_request([4, 5, 6], id="e1", empty_final=True, model="ens_repeat")]))  # fmt: skip
case("grpc stream decoupled ensemble error, then a good request")(lambda s: stream(s, [
    repeat_request([4, 5, 6], id="e2", mode="error", empty_final=True, model="ens_repeat"),
    repeat_request([9], id="after", empty_final=True, model="ens_repeat")]))  # fmt: skip
case("http generate_stream decoupled ensemble")(
    lambda s: rest_typed(s, "POST", "/v2/models/ens_repeat/generate_stream", {"IN": [4, 5, 6]}))  # fmt: skip

# logging, trace, shared memory
http_case("http logging", "GET", "/v2/logging")
http_case("http logging unknown key", "POST", "/v2/logging", {"nope": 1})
def own_file(s: Server, out: dict[str, Any]) -> dict[str, Any]:
    """The trace settings, the server's own trace file named alike (each writes its own)."""
    text = json.dumps(out).replace(json.dumps(str(s.trace))[1:-1], "<its trace file>")
    return dict(json.loads(text))


case("http trace setting")(lambda s: own_file(s, rest(s, "GET", "/v2/trace/setting")))
case("http trace setting unknown key")(lambda s: own_file(s, rest(s, "POST", "/v2/trace/setting", {"nope": "1"})))
http_case("http system shared memory status", "GET", "/v2/systemsharedmemory/status")
http_case("http cuda shared memory status", "GET", "/v2/cudasharedmemory/status")
grpc_case("grpc logging", "LogSettings", lambda: pb().LogSettingsRequest())


@case("grpc logging unknown key")
def _grpc_log_unknown(s: Server) -> Any:
    req = pb().LogSettingsRequest()
    req.settings["nope"].bool_param = True
    return rpc(s, "LogSettings", req)


case("grpc trace setting")(lambda s: own_file(s, rpc(s, "TraceSetting", pb().TraceSettingRequest())))


def traced(s: Server, model: str, settings: dict[str, Any], send: Callable[[], Any], expect: int) -> list[Any]:
    """The traces ``send``'s requests leave in the server's trace file: ``settings`` set on ``model`` (one trace a
    numbered file: ``log_frequency`` 1), cleared after. Each trace as its objects, read as Triton's tools read them
    (by trace id); its timestamps' names sorted (Triton's order changes with its threads' timing) and their times
    left out; ids as the order the traces were written in."""
    def numbered() -> set[Path]:  # whole ones (each is written as .part, then renamed)
        return {f for f in s.trace.parent.glob(s.trace.name + ".*") if f.suffix[1:].isdigit()}

    before = numbered()
    answers = [rest(s, "POST", f"/v2/models/{model}/trace/setting", {"log_frequency": "1", **settings})]
    sent = send()
    answers += sent if isinstance(sent, list) else [sent]
    files: list[Path] = []
    deadline = time.monotonic() + 5  # a trace is written once its answer has gone: soon after the client has it
    while time.monotonic() < deadline:
        files = sorted(numbered() - before, key=lambda f: int(f.suffix[1:]))
        if len(files) >= expect:
            break
        time.sleep(0.05)
    clear = dict.fromkeys(["log_frequency", *settings])
    answers.append(rest(s, "POST", f"/v2/models/{model}/trace/setting", clear))
    objects = [o for f in files for o in json.loads(f.read_text())]
    ids = {i: n for n, i in enumerate(dict.fromkeys(o["id"] for o in objects))}  # in the order written
    traces: dict[int, dict[str, Any]] = {}
    for o in objects:
        t = traces.setdefault(ids[o["id"]], {"timestamps": [], "tensors": []})
        if "model_name" in o:
            t["head"] = {k: ids[v] if k == "parent_id" else v for k, v in o.items() if k != "id"}
        elif "timestamps" in o:
            t["timestamps"] += [ts["name"] for ts in o["timestamps"]]
        else:
            t["tensors"].append({"activity": o["activity"], **o["tensor"]})
    for t in traces.values():
        t["timestamps"].sort()
    statuses = [a.get("status", a.get("code")) for a in answers if isinstance(a, dict)]  # the answers are other cases'
    return own_file(s, {"settings": answers[0], "statuses": statuses, "files": len(files),
                        "traces": [traces[i] for i in sorted(traces)]})  # fmt: skip


@case("http and grpc trace file, level TIMESTAMPS and TENSORS")
def _trace_file(s: Server) -> Any:
    def send() -> Any:
        return [rest(s, "POST", INFER, mlp_body(id="t1")),
                rpc(s, "ModelInfer", infer_request("mlp", [("x", "FP32", [2, 4], "", [])], raw=[X_RAW]))]  # fmt: skip

    return traced(s, "mlp", {"trace_level": ["TIMESTAMPS", "TENSORS"], "trace_rate": "1"}, send, 2)


@case("http trace file of an ensemble")
def _trace_file_ensemble(s: Server) -> Any:
    return traced(s, "pipe", {"trace_level": ["TIMESTAMPS"], "trace_rate": "1"},
                  lambda: rest(s, "POST", "/v2/models/pipe/infer", mlp_body(id="e1")), 1)  # fmt: skip
grpc_case("grpc system shared memory status", "SystemSharedMemoryStatus", lambda: pb().SystemSharedMemoryStatusRequest())
grpc_case("grpc cuda shared memory status", "CudaSharedMemoryStatus", lambda: pb().CudaSharedMemoryStatusRequest())


# system shared memory: POSIX objects made here (the same key for both servers, written anew for each), each
# case unregistering what it registered; registers at offset 0 (2.51 needs page-aligned offsets, and applies
# one twice) and one region per key (2.51 cannot register a key twice)
SHM = "/v2/systemsharedmemory"
SHM_OBJECTS: list[Path] = []  # removed on the way out
NOBATCH_X_RAW = np.arange(1, 7, dtype="<f4").tobytes()  # nobatch's x [2, 3]: 24 bytes, y = 2x


def shm_object(tag: str, data: bytes) -> str:
    """The key of a POSIX shared memory object (a file in /dev/shm) holding ``data``, made or rewritten."""
    path = Path("/dev/shm") / f"polystack-parity-{os.getpid()}-{tag}"
    path.write_bytes(data)
    if path not in SHM_OBJECTS:
        SHM_OBJECTS.append(path)
    return f"/{path.name}"


def shm_floats(key: str, offset: int, size: int) -> list[float]:
    """What an object holds at ``offset``, as FP32 values."""
    return list(np.frombuffer((Path("/dev/shm") / key[1:]).read_bytes()[offset : offset + size], "<f4").tolist())


def shm_params(region: str, size: int, offset: int = 0) -> dict[str, Any]:
    return {"shared_memory_region": region, "shared_memory_byte_size": size, "shared_memory_offset": offset}


def http_register(s: Server, name: str, key: str, size: int, offset: int = 0) -> dict[str, Any]:
    return rest(s, "POST", f"{SHM}/region/{name}/register", {"key": key, "offset": offset, "byte_size": size})


def grpc_register(s: Server, name: str, key: str, size: int, offset: int = 0) -> dict[str, Any]:
    req = pb().SystemSharedMemoryRegisterRequest(name=name, key=key, offset=offset, byte_size=size)
    return rpc(s, "SystemSharedMemoryRegister", req)


def grpc_unregister(s: Server, name: str = "") -> dict[str, Any]:
    return rpc(s, "SystemSharedMemoryUnregister", pb().SystemSharedMemoryUnregisterRequest(name=name))


def grpc_shm_status(s: Server, name: str = "") -> dict[str, Any]:
    return rpc(s, "SystemSharedMemoryStatus", pb().SystemSharedMemoryStatusRequest(name=name))


@case("http shm register, status and unregister")
def _http_shm(s: Server) -> Any:
    key = shm_object("h-reg", bytes(64))
    return {
        "register": http_register(s, "h-reg", key, 64),
        "status": rest(s, "GET", f"{SHM}/status"),
        "status of the region": rest(s, "GET", f"{SHM}/region/h-reg/status"),
        "unregister": rest(s, "POST", f"{SHM}/region/h-reg/unregister"),
        "status after": rest(s, "GET", f"{SHM}/status"),
        "unregister again": rest(s, "POST", f"{SHM}/region/h-reg/unregister"),
    }


@case("grpc shm register, status and unregister")
def _grpc_shm(s: Server) -> Any:
    key = shm_object("g-reg", bytes(64))
    return {
        "register": grpc_register(s, "g-reg", key, 64),
        "status": grpc_shm_status(s),
        "status of the region": grpc_shm_status(s, "g-reg"),
        "unregister": grpc_unregister(s, "g-reg"),
        "status after": grpc_shm_status(s),
        "unregister again": grpc_unregister(s, "g-reg"),
    }


http_case("http shm status of an unknown region", "GET", f"{SHM}/region/nope/status")
grpc_case("grpc shm status of an unknown region", "SystemSharedMemoryStatus",
          lambda: pb().SystemSharedMemoryStatusRequest(name="nope"))  # fmt: skip


@case("http shm register out of bounds")
def _http_shm_out_of_bounds(s: Server) -> Any:
    steps = {"register": http_register(s, "h-oob", shm_object("h-oob", bytes(64)), 64, offset=32)}
    steps["status"] = rest(s, "GET", f"{SHM}/status")
    rest(s, "POST", f"{SHM}/region/h-oob/unregister")  # had it been taken
    return steps


@case("grpc shm register out of bounds")
def _grpc_shm_out_of_bounds(s: Server) -> Any:
    steps = {"register": grpc_register(s, "g-oob", shm_object("g-oob", bytes(64)), 64, offset=32)}
    steps["status"] = grpc_shm_status(s)
    grpc_unregister(s, "g-oob")
    return steps


case("http shm register a key that does not exist")(lambda s: http_register(s, "h-nokey", "/polystack-parity-nokey", 64))
case("grpc shm register a key that does not exist")(lambda s: grpc_register(s, "g-nokey", "/polystack-parity-nokey", 64))


@case("http shm infer")
def _http_shm_infer(s: Server) -> Any:
    """nobatch's x from a region (at 0) and its y into the same region (at 32): the answer, and the memory."""
    key = shm_object("h-io", NOBATCH_X_RAW + bytes(40))
    steps: dict[str, Any] = {"register": http_register(s, "h-io", key, 64)}
    steps["infer"] = rest(s, "POST", NOBATCH_INFER, {
        "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": shm_params("h-io", 24)}],
        "outputs": [{"name": "y", "parameters": shm_params("h-io", 24, 32)}]})  # fmt: skip
    steps["y in the region"] = shm_floats(key, 32, 24)
    steps["unregister"] = rest(s, "POST", f"{SHM}/region/h-io/unregister")
    return steps


@case("grpc shm infer")
def _grpc_shm_infer(s: Server) -> Any:
    key = shm_object("g-io", NOBATCH_X_RAW + bytes(40))
    steps: dict[str, Any] = {"register": grpc_register(s, "g-io", key, 64)}
    req = infer_request("nobatch", [("x", "FP32", [2, 3], "", [])], outputs=[("y", shm_params("g-io", 24, 32))])
    for k, v in shm_params("g-io", 24).items():
        set_param(req.inputs[0].parameters[k], v)
    steps["infer"] = rpc(s, "ModelInfer", req)
    steps["y in the region"] = shm_floats(key, 32, 24)
    steps["unregister"] = grpc_unregister(s, "g-io")
    return steps


@case("http shm output byte size 0")
def _http_shm_size_0(s: Server) -> Any:
    steps = {"register": http_register(s, "h-o0", shm_object("h-o0", bytes(64)), 64)}
    steps["infer"] = rest(s, "POST", NOBATCH_INFER, {"inputs": [x_in([2, 3], [1, 2, 3, 4, 5, 6])],
                                                     "outputs": [{"name": "y", "parameters": shm_params("h-o0", 0)}]})  # fmt: skip
    steps["unregister"] = rest(s, "POST", f"{SHM}/region/h-o0/unregister")
    return steps


@case("grpc shm output byte size 0")
def _grpc_shm_size_0(s: Server) -> Any:
    steps = {"register": grpc_register(s, "g-o0", shm_object("g-o0", bytes(64)), 64)}
    steps["infer"] = rpc(s, "ModelInfer", infer_request("nobatch", [("x", "FP32", [2, 3], "fp32_contents", [1, 2, 3, 4, 5, 6])],
                                                        outputs=[("y", shm_params("g-o0", 0))]))  # fmt: skip
    steps["unregister"] = grpc_unregister(s, "g-o0")
    return steps


@case("http shm unregister all")
def _http_shm_all(s: Server) -> Any:
    steps = {f"register {n}": http_register(s, n, shm_object(n, bytes(64)), 64) for n in ("h-all1", "h-all2")}
    steps["unregister all"] = rest(s, "POST", f"{SHM}/unregister")
    steps["status after"] = rest(s, "GET", f"{SHM}/status")
    steps["unregister all again"] = rest(s, "POST", f"{SHM}/unregister")
    return steps


@case("grpc shm unregister all")
def _grpc_shm_all(s: Server) -> Any:
    steps = {f"register {n}": grpc_register(s, n, shm_object(n, bytes(64)), 64) for n in ("g-all1", "g-all2")}
    steps["unregister all"] = grpc_unregister(s)
    steps["status after"] = grpc_shm_status(s)
    return steps


# model control (explicit mode), last: these change what is served
case("http repository index")(lambda s: sorted_index(rest(s, "POST", "/v2/repository/index", {})))
case("http repository index ready")(lambda s: sorted_index(rest(s, "POST", "/v2/repository/index", {"ready": True})))
http_case("http load unknown model", "POST", "/v2/repository/models/nope/load")
http_case("http load config not json", "POST", "/v2/repository/models/nobatch/load",
          {"parameters": {"config": "{not json"}})  # fmt: skip
http_case("http load unknown parameter", "POST", "/v2/repository/models/nobatch/load",
          {"parameters": {"confg": "{}"}})  # fmt: skip
http_case("http unload unknown model", "POST", "/v2/repository/models/nope/unload")
http_case("http load over the rate limiter's resources", "POST", "/v2/repository/models/greedy/load")
grpc_case("grpc load over the rate limiter's resources", "RepositoryModelLoad",
          lambda: pb().RepositoryModelLoadRequest(model_name="greedy"))  # fmt: skip
case("http repository index after failed loads")(lambda s: sorted_index(rest(s, "POST", "/v2/repository/index", {})))
case("grpc repository index")(lambda s: sorted_index(rpc(s, "RepositoryIndex", pb().RepositoryIndexRequest())))
grpc_case("grpc repository index of a named repository", "RepositoryIndex",
          lambda: pb().RepositoryIndexRequest(repository_name="x"))  # fmt: skip
grpc_case("grpc load unknown model", "RepositoryModelLoad", lambda: pb().RepositoryModelLoadRequest(model_name="nope"))
grpc_case("grpc unload unknown model", "RepositoryModelUnload", lambda: pb().RepositoryModelUnloadRequest(model_name="nope"))


@case("grpc load config not json")
def _grpc_load_bad_config(s: Server) -> Any:
    req = pb().RepositoryModelLoadRequest(model_name="nobatch")
    req.parameters["config"].string_param = "{not json"
    return rpc(s, "RepositoryModelLoad", req)


@case("grpc load unknown parameter")
def _grpc_load_unknown_param(s: Server) -> Any:
    req = pb().RepositoryModelLoadRequest(model_name="nobatch")
    req.parameters["confg"].string_param = "{}"
    return rpc(s, "RepositoryModelLoad", req)


def until_not_ready(s: Server, model: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and rest(s, "GET", f"/v2/models/{model}/ready")["status"] == 200:
        time.sleep(0.2)


@case("http unload and reload an ensemble's step")
def _http_step_reload(s: Server) -> Any:
    """Unload step2 (pipe goes with it on both), load it again: does pipe come back?"""
    steps: dict[str, Any] = {"unload step2": rest(s, "POST", "/v2/repository/models/step2/unload")}
    until_not_ready(s, "step2")
    until_not_ready(s, "pipe")
    steps["pipe ready after the unload"] = rest(s, "GET", "/v2/models/pipe/ready")["status"]
    steps["load step2"] = rest(s, "POST", "/v2/repository/models/step2/load")
    steps["pipe ready after the load"] = rest(s, "GET", "/v2/models/pipe/ready")["status"]
    steps["infer pipe"] = rest(s, "POST", "/v2/models/pipe/infer", mlp_body())
    if steps["pipe ready after the load"] != 200:  # as it was, for whatever runs next
        rest(s, "POST", "/v2/repository/models/pipe/load")
    return steps


@case("grpc unload and reload an ensemble's step")
def _grpc_step_reload(s: Server) -> Any:
    steps: dict[str, Any] = {"unload step2": rpc(s, "RepositoryModelUnload",
                                                 pb().RepositoryModelUnloadRequest(model_name="step2"))}  # fmt: skip
    until_not_ready(s, "step2")
    until_not_ready(s, "pipe")
    steps["pipe ready after the unload"] = rpc(s, "ModelReady", pb().ModelReadyRequest(name="pipe"))
    steps["load step2"] = rpc(s, "RepositoryModelLoad", pb().RepositoryModelLoadRequest(model_name="step2"))
    steps["pipe ready after the load"] = rpc(s, "ModelReady", pb().ModelReadyRequest(name="pipe"))
    steps["infer pipe"] = rpc(s, "ModelInfer", infer_request("pipe", [_X_RAW_IN], raw=[X_RAW]))
    if steps["infer pipe"]["code"] != "OK":
        rest(s, "POST", "/v2/repository/models/pipe/load")
    return steps


# metrics, after everything: the nv_* families on the metrics port (values move with timing: not compared)
NV_COMMENT = re.compile(r"^# (HELP|TYPE) (nv_\w+) (.*)$")


def scrape(s: Server) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", s.metrics, timeout=60)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


@case("http metrics nv_ families")
def _metrics_families(s: Server) -> Any:
    """Each nv_* family's HELP and TYPE."""
    status, text = scrape(s)
    families: dict[str, dict[str, str]] = {}
    for m in filter(None, map(NV_COMMENT.match, text.splitlines())):
        families.setdefault(m[2], {})[m[1].lower()] = m[3]
    return {"status": status, "families": families}


@case("http metrics nv_ series")
def _metrics_series(s: Server) -> Any:
    """Each nv_* series by its name and labels (sorted), its value left out: one difference per series."""
    status, text = scrape(s)
    names = (line.rsplit(" ", 1)[0] for line in text.splitlines() if line.startswith("nv_"))
    labels = re.compile(r"\{(.*)\}")
    series = sorted({labels.sub(lambda m: "{" + ",".join(sorted(m[1].split(","))) + "}", n) for n in names})
    return {"status": status, "series": dict.fromkeys(series, True)}


# -- comparing ----------------------------------------------------------------------------------------
def short(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def compare(t: Any, p: Any, path: str, diffs: list[str], notes: list[str]) -> None:
    """Append to ``diffs`` where polystack's outcome ``p`` differs from Triton's ``t`` (each led by its path),
    to ``notes`` what differs within the rules (a missing request-id prefix, numbers within the tolerance)."""
    if isinstance(t, dict) and isinstance(p, dict):
        for k in list(t) + [k for k in p if k not in t]:
            at = f"{path}.{k}"
            if k not in p:
                diffs.append(f"{at}: Triton's only ({short(t[k])})")
            elif k not in t:
                diffs.append(f"{at}: polystack's only ({short(p[k])})")
            elif k in MESSAGE_KEYS and isinstance(t[k], str) and isinstance(p[k], str):
                compare_message(t[k], p[k], at, diffs, notes)
            else:
                compare(t[k], p[k], at, diffs, notes)
    elif isinstance(t, list) and isinstance(p, list):
        if len(t) != len(p):
            if all(isinstance(v, str | int) for v in t + p):
                only_t, only_p = [v for v in t if v not in p], [v for v in p if v not in t]
                diffs.append(f"{path}: {len(t)} items / {len(p)}; Triton's only {short(only_t)}, polystack's only {short(only_p)}")
            else:
                diffs.append(f"{path}: {len(t)} items / {len(p)}: Triton {short(t)} / polystack {short(p)}")
            return
        for i, (a, b) in enumerate(zip(t, p, strict=True)):
            compare(a, b, f"{path}[{i}]", diffs, notes)
    elif is_number(t) and is_number(p) and (isinstance(t, float) or isinstance(p, float)):
        if not math.isclose(t, p, rel_tol=RTOL, abs_tol=ATOL) and not (math.isnan(t) and math.isnan(p)):
            diffs.append(f"{path}: Triton {t!r} / polystack {p!r}")
        elif t != p or type(t) is not type(p):
            notes.append(f"{path}: numbers within tolerance, written differently (Triton {t!r}, polystack {p!r})")
    elif t != p or type(t) is not type(p):
        diffs.append(f"{path}: Triton {short(t)} / polystack {short(p)}")


def compare_message(t: str, p: str, path: str, diffs: list[str], notes: list[str]) -> None:
    words = REQUEST_ID.sub("", t).rstrip()
    if not words:  # an empty message is matched by an empty one only
        if p.strip():
            diffs.append(f"{path}: Triton's is empty / polystack {short(p, 300)}")
        return
    if p.startswith(t.rstrip()):
        return
    prefix = REQUEST_ID.match(t)
    if prefix:
        notes.append(f"{path}: without Triton's prefix {prefix.group(0)!r}")
    if p.startswith(words):
        return
    same = next((i for i, (a, b) in enumerate(zip(words, p, strict=False)) if a != b), min(len(words), len(p)))
    agree = f" (the first {same} characters agree)" if same >= 20 else ""
    diffs.append(f"{path}: does not start with Triton's words{agree}: Triton {short(t, 300)} / polystack {short(p, 300)}")


def judge(name: str, triton: Any, poly: Any) -> dict[str, Any]:
    diffs: list[str] = []
    notes: list[str] = []
    compare(triton, poly, "$", diffs, notes)
    for server, outcome in (("Triton", triton), ("polystack", poly)):
        if isinstance(outcome, dict) and "exception" in outcome:  # a case that could not run is never "same"
            diffs.append(f"$.exception: the case failed on {server}: {short(outcome['exception'], 300)}")
    known_pattern, why = KNOWN.get(name, ("", ""))
    known = [d for d in diffs if known_pattern and re.fullmatch(known_pattern, d.split(":", 1)[0])]
    unknown = [d for d in diffs if d not in known]
    verdict = "differs" if unknown else "known" if known else "same"
    row: dict[str, Any] = {"case": name, "verdict": verdict, "differences": unknown, "known": known, "notes": notes}
    if known:
        row["documented"] = why
    if name in KNOWN and not known:
        notes.append("KNOWN lists this case, but what it covers no longer differs")
    row["triton"], row["polystack"] = triton, poly
    return row


def run_case(name: str, fn: CaseFn, triton: Server, poly: Server) -> dict[str, Any]:
    outcomes = []
    for server in (triton, poly):
        try:
            outcomes.append(fn(server))
        except Exception as e:  # a case that cannot run is an outcome too
            outcomes.append({"exception": f"{type(e).__name__}: {e}"})
    return judge(name, *outcomes)


# -- output -------------------------------------------------------------------------------------------
def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=max(shutil.get_terminal_size((200, 50)).columns, 140))
    table = Table(title="polystack against tritonserver 2.51", show_lines=False)
    table.add_column("case", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("how")
    style = {"same": "green", "known": "yellow", "differs": "bold red"}
    for r in rows:
        how = [*r["differences"], *(f"(known) {d}" for d in r["known"]), *(f"(note) {n}" for n in r["notes"])]
        if r.get("documented"):
            how.append(f"documented: {r['documented']}")
        table.add_row(escape(r["case"]), f"[{style[r['verdict']]}]{r['verdict']}[/]", escape("\n".join(how)))
    console.print(table)
    counts = {v: sum(r["verdict"] == v for r in rows) for v in style}
    console.print(f"{len(rows)} cases: " + ", ".join(f"{n} {v}" for v, n in counts.items()))


def md(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|").replace("\n", " ")


def write_markdown(result: dict[str, Any]) -> None:
    rows = result["cases"]
    s = result["summary"]
    lines = [
        START,
        "## Triton parity (`bench/triton_parity.py`)",
        "",
        f"Checked {result['measured_at']} on this machine. Command: `.venv/bin/{result['command']}` ({result['run_s']:.0f} s).",
        f"{result['tritonserver']} and `polystack serve`, both `--model-control-mode explicit`, on equivalent"
        " repositories (an FP32 MLP with dynamic batching and labels, a model without batching, an INT64 + BOOL"
        " model of two inputs and two outputs, an ensemble of two steps, a model with priority levels and queue"
        " policies, a sequence model; Triton's as Python-backend models running the same ONNX files, its sequence"
        " model keeping its sums itself; and a decoupled Python model, the same on both, with an ensemble of it),"
        " get the same requests over HTTP and gRPC: health, metadata, config,"
        " statistics, inference that succeeds (JSON, binary, requested outputs, classification, a sequence,"
        " priorities) and that is refused, the decoupled model and its ensemble (the gRPC stream, generate and"
        " generate_stream, infer's refusals), logging, trace settings, the trace files each writes (Triton's triton trace mode: timestamps and tensors over HTTP and gRPC, an ensemble's steps), system shared memory (registration, inference in"
        " regions), model control, and the metrics port's nv_* families and series. Status codes, fields and"
        " values must match (numbers"
        " within a relative 1e-5); an error message must start with Triton's words, once Triton's"
        " `[request id: ...]` prefix is taken off (its absence is only noted). Known: differences the README"
        " documents.",
        "",
        f"{s['cases']} cases ({s['http']} HTTP, {s['grpc']} gRPC): {s['same']} same, {s['known']} known,"
        f" {s['differs']} differ; {s['without_request_id_prefix']} error messages lack Triton's request-id prefix.",
        "",
        "| case | differences |",
        "|---|---|",
    ]
    for r in rows:
        if r["verdict"] == "differs":
            lines.append(f"| {md(r['case'])} | {'<br>'.join(md(d) for d in r['differences'])} |")
    lines += ["", "Known, as the README documents them:", "", "| case | difference | README |", "|---|---|---|"]
    for r in rows:
        if r["known"]:
            lines.append(f"| {md(r['case'])} | {'<br>'.join(md(d) for d in r['known'])} | {md(r['documented'])} |")
    lines.append(END)
    serving.put_section(START, END, lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="", help="run only the cases whose name matches this regex (no results written)")
    args = ap.parse_args()
    selected = {n: f for n, f in CASES.items() if re.search(args.cases, n)}
    if not selected:
        raise SystemExit(f"no case matches {args.cases!r}; cases: {', '.join(CASES)}")
    started, load_start = time.perf_counter(), round(os.getloadavg()[0], 2)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the servers are stopped on the way out, as on Ctrl-C
    triton = triton_reference.ensure_tritonserver()
    work = Path(tempfile.mkdtemp(prefix="polystack-bench-parity-"))
    servers: list[Server] = []
    rows: list[dict[str, Any]] = []
    try:
        backends = triton_reference.backends_folder(triton, work)
        triton_repo, poly_repo = build_repositories(work)
        servers.append(launch_triton(triton, backends, triton_repo, work))
        servers.append(launch_polystack(poly_repo, work))
        for server in servers:
            ready(server)
        print(f"both up in {time.perf_counter() - started:.0f} s; {len(selected)} cases", flush=True)
        for name, fn in selected.items():
            rows.append(run_case(name, fn, *servers))
    except BaseException:
        print(f"the servers' logs are kept in {work}", file=sys.stderr)
        raise
    finally:
        for server in servers:
            shut(server)
        for path in SHM_OBJECTS:
            path.unlink(missing_ok=True)
    print_table(rows)
    if args.cases:
        shutil.rmtree(work, ignore_errors=True)
        return 0
    summary = {
        "cases": len(rows),
        "http": sum(r["case"].startswith("http") for r in rows),
        "grpc": sum(r["case"].startswith("grpc") for r in rows),
        **{v: sum(r["verdict"] == v for r in rows) for v in ("same", "known", "differs")},
        "without_request_id_prefix": sum(any("without Triton's prefix" in n for n in r["notes"]) for r in rows),
    }
    result = {
        "benchmark": "triton_parity",
        "command": " ".join(["python", "bench/triton_parity.py", *sys.argv[1:]]),
        "tritonserver": "tritonserver 2.51.0 (nvidia-pytriton 0.7.0)",
        "run_s": round(time.perf_counter() - started, 1),
        "summary": summary,
        "cases": rows,
        **serving.run_facts(load_start),
    }
    serving.save(RESULTS, result, write_markdown)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
