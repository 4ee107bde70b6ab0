"""Text a model hands to a Python model (an ensemble step's output, a BLS call's input, a called model's output)
reaches it as Triton's Python backend hands it: each element ``bytes``, whatever the sender built the tensor from
(Python ``str``, numbers), as Triton's stub sends a BYTES tensor (``serialize_byte_tensor``) and the receiving
stub reads it back (helper-232: python_backend's ``response_parameters`` model decodes them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from test_serve_python_models import python_folder, served
from tritonclient import http as httpclient

# what it was given: each element's type and value
SEEN = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils


def seen(array):
    return [[type(x).__name__, x.decode() if isinstance(x, bytes) else repr(x)] for x in array.ravel()]


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "SEEN", np.array([json.dumps(seen(pb_utils.get_input_tensor_by_name(r, "T").as_numpy()))], dtype=object)
        )]) for r in requests]
'''
# text built from Python str and a number, as a model's own code builds it (its input: none read)
MAKER = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("T", np.array(["abc", "\u00e9t\u00e9", 5], dtype=object))])
                for r in requests]
'''
# calls "seen" with such text, and "maker" and "onnx_text" for theirs
CALLER = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils
from model_seen import seen


class TritonPythonModel:
    def execute(self, requests):
        sent = pb_utils.InferenceRequest(
            model_name="seen", inputs=[pb_utils.Tensor("T", np.array(["abc", "\u00e9t\u00e9", 5], dtype=object))],
            requested_output_names=["SEEN"],
        ).exec()
        made = pb_utils.InferenceRequest(
            model_name="maker", inputs=[pb_utils.Tensor("T", np.array([b""], dtype=object))],
            requested_output_names=["T"],
        ).exec()
        echoed = pb_utils.InferenceRequest(
            model_name="onnx_text", inputs=[pb_utils.Tensor("T", np.array([b"abc"], dtype=object))],
            requested_output_names=["U"],
        ).exec()
        facts = {
            "sent": json.loads(pb_utils.get_output_tensor_by_name(sent, "SEEN").as_numpy()[0]),
            "made": seen(pb_utils.get_output_tensor_by_name(made, "T").as_numpy()),
            "echoed": seen(pb_utils.get_output_tensor_by_name(echoed, "U").as_numpy()),
        }
        return [pb_utils.InferenceResponse([pb_utils.Tensor("SEEN", np.array([json.dumps(facts)], dtype=object))])
                for r in requests]
'''
TEXT_IN = 'input [ { name: "T", data_type: TYPE_STRING, dims: [ -1 ] } ]\n'
SEEN_OUT = 'output [ { name: "SEEN", data_type: TYPE_STRING, dims: [ 1 ] } ]\n'
TEXT_OUT = 'output [ { name: "T", data_type: TYPE_STRING, dims: [ -1 ] } ]\n'


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    given = " ".join(f'{{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
    taken = " ".join(f'{{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
    return f'{{ model_name: "{model}" model_version: -1 input_map [ {given} ] output_map [ {taken} ] }}'


def _ensemble(repo: Path, name: str, config: str, steps: list[str]) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(
        f'platform: "ensemble"\n{config}ensemble_scheduling {{ step [ {", ".join(steps)} ] }}\n'
    )


def repository(repo: Path) -> Path:
    python_folder(repo, "seen", SEEN, f'backend: "python"\n{TEXT_IN}{SEEN_OUT}')
    python_folder(repo, "maker", MAKER, f'backend: "python"\n{TEXT_IN}{TEXT_OUT}')
    python_folder(repo, "caller", CALLER, f'backend: "python"\n{SEEN_OUT}')
    (repo / "caller" / "1" / "model_seen.py").write_text(SEEN)
    graph = helper.make_graph(  # ONNX Runtime gives its string outputs as str
        [helper.make_node("Identity", ["T"], ["U"])], "text",
        [helper.make_tensor_value_info("T", TensorProto.STRING, [None])],
        [helper.make_tensor_value_info("U", TensorProto.STRING, [None])],
    )  # fmt: skip
    (repo / "onnx_text" / "1").mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), repo / "onnx_text/1/model.onnx")
    (repo / "onnx_text" / "config.pbtxt").write_text(
        f'platform: "onnxruntime_onnx"\n{TEXT_IN}output [ {{ name: "U", data_type: TYPE_STRING, dims: [ -1 ] }} ]\n'
    )
    _ensemble(repo, "made_then_seen", TEXT_IN + SEEN_OUT,
              [_step("maker", {"T": "T"}, {"T": "t"}), _step("seen", {"T": "t"}, {"SEEN": "SEEN"})])  # fmt: skip
    _ensemble(repo, "onnx_then_seen", TEXT_IN + SEEN_OUT,
              [_step("onnx_text", {"T": "T"}, {"U": "u"}), _step("seen", {"T": "u"}, {"SEEN": "SEEN"})])  # fmt: skip
    return repo


def _seen(client: httpclient.InferenceServerClient, model: str, text: np.ndarray | None = None) -> object:
    inputs = []
    if text is not None:
        inputs = [httpclient.InferInput("T", list(text.shape), "BYTES")]
        inputs[0].set_data_from_numpy(text)
    return json.loads(client.infer(model, inputs).as_numpy("SEEN")[0])


TRITONS = [["bytes", "abc"], ["bytes", "\u00e9t\u00e9"], ["bytes", "5"]]  # as Triton's stub reads them back


def test_text_a_model_hands_on_reaches_a_python_model_as_bytes_as_from_tritons_stub(tmp_path: Path) -> None:
    with served(tmp_path, repository(tmp_path / "models")) as client:
        empty = np.array([b""], dtype=object)
        assert _seen(client, "made_then_seen", empty) == TRITONS  # an ensemble step's str and number
        assert _seen(client, "onnx_then_seen", np.array([b"abc"], dtype=object)) == [["bytes", "abc"]]  # ONNX's str
        facts = _seen(client, "caller")
        assert facts["sent"] == TRITONS  # a BLS call's input
        assert facts["made"] == TRITONS  # a called model's output
        assert facts["echoed"] == [["bytes", "abc"]]  # an ONNX model's, called
        sent = np.array([b"x", b""], dtype=object)
        assert _seen(client, "seen", sent) == [["bytes", "x"], ["bytes", ""]]  # a client's
        text = httpclient.InferInput("T", [1], "BYTES")
        text.set_data_from_numpy(empty)
        made = client.infer("maker", [text]).as_numpy("T")  # and a client gets the text as Triton sends it
        assert made.tolist() == [b"abc", "\u00e9t\u00e9".encode(), b"5"]
