"""KServe's own Python SDK clients (``kserve.InferenceRESTClient``, with the V2 and the V1 protocol, and
``kserve.InferenceGRPCClient``) calling a polystack server, as a KServe user's code calls a model server: run by ``test_serve_kserve_clients.py`` with
the interpreter of ``.venv-kserve`` (KServe's pins conflict with polystack's: pandas < 3, protobuf < 7), so it
imports nothing of polystack and prints what the clients got, as one JSON document, for the test to check.

    .venv-kserve/bin/python tests/server/kserve_calls.py HTTP_PORT GRPC_PORT
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import InferResponse, RequestedOutput

X = np.arange(48, dtype=np.float32).reshape(3, 16) / 48  # the mlp's input; the test computes its answer
TYPED = {  # the types model's inputs: INT64 and BYTES pass through, BOOL is negated, FP16 passes through
    "i": ("INT64", np.array([[1, -(2**40)], [3, 2**62]], np.int64)),
    "b": ("BOOL", np.array([[True, False], [False, True]])),
    "s": ("BYTES", np.array([[b"a", "\u00e9".encode()], [b"", b"x\x00y"]], dtype=np.object_)),
    "h": ("FP16", np.array([[0.5, 2], [-1, 65504]], np.float16)),
}


def tensors(names: str, binary: bool) -> list[InferInput]:
    out = []
    for name in names:
        datatype, value = TYPED[name]
        tensor = InferInput(name, list(value.shape), datatype)
        tensor.set_data_from_numpy(value, binary_data=binary)
        out.append(tensor)
    return out


def shown(response: InferResponse) -> dict[str, Any]:
    """A response as JSON: its id, model, and each output's datatype, shape and values."""
    outputs = {}
    for o in response.outputs:
        values = o.as_numpy()
        if values.dtype == np.object_:  # BYTES: the REST client gives str, the gRPC one bytes
            values = np.vectorize(lambda v: v.encode() if isinstance(v, str) else v, otypes=[object])(values)
            listed: Any = [v.decode("latin-1") for v in values.reshape(-1)]
        else:
            listed = values.reshape(-1).tolist()
        outputs[o.name] = {"datatype": o.datatype, "shape": list(o.shape), "data": listed}
    return {"id": response.id, "model_name": response.model_name, "outputs": outputs}


async def refused(call: Any) -> dict[str, Any]:
    """What a call the server refuses raises: its type, HTTP status or gRPC code, and message."""
    try:
        await call
    except Exception as e:  # the point is what the client raises
        code = getattr(getattr(e, "response", None), "status_code", None)
        if code is None and hasattr(e, "code"):
            code = e.code().name
        details = e.details() if hasattr(e, "details") else str(e)
        return {"type": type(e).__name__, "code": code, "message": details}
    return {"type": None}


async def rest_calls(base: str) -> dict[str, Any]:
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    try:
        got: dict[str, Any] = {
            "live": await client.is_server_live(base),
            "ready": await client.is_server_ready(base),
            "model_ready": await client.is_model_ready(base, "mlp"),
            "unknown_model_ready": await client.is_model_ready(base, "nope"),
        }
        for binary in (False, True):
            x = InferInput("x", list(X.shape), "FP32")
            x.set_data_from_numpy(X, binary_data=binary)
            request = InferRequest(model_name="mlp", infer_inputs=[x], request_id=f"rest-{binary}")
            got[f"mlp_binary_{binary}"] = shown(await client.infer(base, request, model_name="mlp"))
        # JSON: KServe's client refuses FP16 in JSON itself, so the model without it
        request = InferRequest(model_name="plain", infer_inputs=tensors("ibs", False), request_id="plain")
        got["plain_json"] = shown(await client.infer(base, request, model_name="plain"))
        request = InferRequest(model_name="types", infer_inputs=tensors("ibsh", True), request_id="types")
        got["types_binary"] = shown(await client.infer(base, request, model_name="types"))
        request = InferRequest(
            model_name="types", infer_inputs=tensors("ibsh", True), request_outputs=[RequestedOutput("so")]
        )
        got["types_one_output"] = shown(await client.infer(base, request, model_name="types"))
        # a plain dict, as KServe's docs send one
        doc = {"id": "d", "inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": X[0].tolist()}]}
        got["mlp_dict"] = shown(await client.infer(base, doc, model_name="mlp"))
        bad = {"inputs": [{"name": "q", "shape": [1, 16], "datatype": "FP32", "data": X[0].tolist()}]}
        got["unexpected_input"] = await refused(client.infer(base, bad, model_name="mlp"))
        got["unknown_model"] = await refused(client.infer(base, doc, model_name="nope"))
        short = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [1.0]}]}
        got["short_data"] = await refused(client.infer(base, short, model_name="mlp"))
        return got
    finally:
        await client.close()


async def v1_calls(base: str) -> dict[str, Any]:
    """KServe's V1 protocol (TensorFlow Serving's REST bodies), as its REST client speaks it."""
    client = InferenceRESTClient(RESTConfig(protocol="v1", timeout=30))
    try:
        rows = {"instances": X.tolist()}
        named = {"instances": [{"i": [1, 2], "b": [True, False], "s": ["a", {"b64": "eABZ"}]}]}
        return {
            "live": await client.is_server_live(base),
            "model_ready": await client.is_model_ready(base, "mlp"),
            "rows": await client.infer(base, rows, model_name="mlp"),
            "columnar": await client.infer(base, {"inputs": {"x": X[:1].tolist()}}, model_name="mlp"),
            "named": await client.infer(base, named, model_name="plain"),
            "unexpected_input": await refused(client.infer(base, {"instances": [{"q": [1.0]}]}, model_name="mlp")),
            "unknown_model": await refused(client.infer(base, rows, model_name="nope")),
            "ragged": await refused(client.infer(base, {"instances": [[1.0] * 16, [1.0]]}, model_name="mlp")),
        }
    finally:
        await client.close()


async def grpc_calls(url: str) -> dict[str, Any]:
    client = InferenceGRPCClient(url, timeout=30)
    try:
        got: dict[str, Any] = {
            "live": await client.is_server_live(),
            "ready": await client.is_server_ready(),
            "model_ready": await client.is_model_ready("mlp"),
        }
        for binary in (False, True):  # typed contents (fp32_contents), or raw_input_contents
            x = InferInput("x", list(X.shape), "FP32")
            x.set_data_from_numpy(X, binary_data=binary)
            request = InferRequest(model_name="mlp", infer_inputs=[x], request_id=f"grpc-{binary}")
            got[f"mlp_binary_{binary}"] = shown(await client.infer(request))
        got["plain_typed"] = shown(await client.infer(InferRequest("plain", tensors("ibs", False), "plain-g")))
        got["types_raw"] = shown(await client.infer(InferRequest("types", tensors("ibsh", True), "types-g")))
        request = InferRequest("types", tensors("ibsh", True), request_outputs=[RequestedOutput("bo")])
        got["types_one_output"] = shown(await client.infer(request))
        x = InferInput("q", list(X.shape), "FP32")
        x.set_data_from_numpy(X, binary_data=True)
        got["unexpected_input"] = await refused(client.infer(InferRequest("mlp", [x])))
        got["unknown_model"] = await refused(client.infer(InferRequest("nope", [x])))
        got["unknown_model_ready"] = await client.is_model_ready("nope")
        return got
    finally:
        await client.close()


async def main(http_port: int, grpc_port: int) -> None:
    rest = await rest_calls(f"http://127.0.0.1:{http_port}")
    v1 = await v1_calls(f"http://127.0.0.1:{http_port}")
    grpc = await grpc_calls(f"127.0.0.1:{grpc_port}")
    print(json.dumps({"rest": rest, "v1": v1, "grpc": grpc}))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
