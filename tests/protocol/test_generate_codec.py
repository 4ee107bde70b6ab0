"""The generate extension's body codec (``protocol/generate_codec.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from polystack.errors import InvalidTensor
from polystack.protocol import generate_codec
from polystack.protocol.wire import InferResponse
from polystack.types import DType

INPUTS = [("PROMPT", DType.BYTES, [1]), ("STREAM", DType.BOOL, [1])]


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b'{"PROMPT": "a", "STREAM": false, "PROMPT": "b"}', "PROMPT"),
        (b'{"PROMPT": "a", "STREAM": false, "STREAM": true, "PROMPT": "b"}', "STREAM"),  # the first met again
        (b'{"parameters": {"STREAM": false, "STREAM": true}, "PROMPT": "a"}', "STREAM"),
    ],
)
def test_an_input_a_body_names_twice_is_refused_naming_the_first_met_again_as_triton_does(
    body: bytes, named: str
) -> None:
    # Triton's test_duplicate_inputs (helper-153, helper-154): the JSON reader kept the last value of a key given
    # twice and the request ran on it
    with pytest.raises(InvalidTensor, match=f"input '{named}' already exists in request"):
        generate_codec.decode_generate(body, INPUTS)


def test_a_key_that_is_no_input_given_twice_is_a_parameter_as_read_last() -> None:
    request = generate_codec.decode_generate(b'{"PROMPT": "a", "max_tokens": 1, "max_tokens": 2}', INPUTS)
    assert request.parameters == {"max_tokens": 2}


def test_a_generate_answer_of_bytes_that_are_not_utf8_is_refused_saying_where_binary_data_is() -> None:
    answer = InferResponse("m", "1", {"text": np.array([b"\xfa"], dtype=object)})
    with pytest.raises(InvalidTensor, match=r"output 'text' holds bytes that are not UTF-8 text.*infer endpoint"):
        generate_codec.encode_generate(answer)
