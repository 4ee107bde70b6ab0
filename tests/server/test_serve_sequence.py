"""Triton's sequence batching: a stateful model (an accumulator whose running sum is its implicit state)
served from a repository folder whose config.pbtxt sets sequence_batching, by a real server process to the
real tritonclient (HTTP, gRPC and the gRPC stream); the sequence batcher on its own (batches of several
sequences, slots, idle sequences); and the configs refused, each with what is wrong."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import queue
import shutil
import signal
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from servekit import (
    ACC,
    CONCAT_IO,
    cli_server,
    concat_inputs,
    concat_onnx,
    free_port,
    refused_after_loads,
    refused_at_start,
    same_config_both_ways,
    single_op,
)
from tritonclient.utils import InferenceServerException

from polystack.batching.sequence import Control, Flags, SequenceBatcher, SequencePolicy, State, flags_of
from polystack.engine import Engine, LoadedEntry, LoadSpec, default_spec
from polystack.errors import Cancelled, DeadlineExceeded, InvalidRequest, ShuttingDown, Unavailable
from polystack.examples import accumulator_onnx
from polystack.formats import import_model
from polystack.server import config_text, model_config, sequence_config
from polystack.store import ModelRecord, Store
from polystack.types import DType


def sequence_repository(root: Path, idle_us: int = 1_000_000) -> Path:
    from onnx import TensorProto

    (root / "acc" / "1").mkdir(parents=True)
    accumulator_onnx(root / "acc" / "1" / "model.onnx", TensorProto.UINT64)
    (root / "acc" / "config.pbtxt").write_text(ACC % {"idle": idle_us})
    return root


@contextmanager
def _served(tmp_path: Path, idle_us: int = 1_000_000, *flags: str) -> Iterator[tuple[Path, int, int]]:
    repo, port, grpc_port = sequence_repository(tmp_path / "models", idle_us), free_port(), free_port()
    args = ["--model-repository", str(repo), "--grpc-port", str(grpc_port), *flags]
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        yield repo, port, grpc_port


def _input(client: Any, value: float) -> Any:
    i = client.InferInput("INPUT", [1, 1], "FP32")
    i.set_data_from_numpy(np.array([[value]], np.float32))
    return i


def _sums(answer: Any) -> tuple[float, int, float]:
    return (
        float(answer.as_numpy("OUTPUT")[0, 0]),
        int(answer.as_numpy("ENDED")[0, 0]),
        float(answer.as_numpy("ID")[0, 0]),
    )


def test_sequences_keep_their_state_for_tritonclient_over_http_and_grpc(tmp_path: Path) -> None:
    with _served(tmp_path) as (_, port, grpc_port):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        # two sequences interleaved, one per transport: each sums its own values
        h = [http.infer("acc", [_input(httpclient, 1.0)], sequence_id=7, sequence_start=True)]
        g = [grpc.infer("acc", [_input(grpcclient, 10.0)], sequence_id=9, sequence_start=True)]
        h.append(http.infer("acc", [_input(httpclient, 2.0)], sequence_id=7))
        g.append(grpc.infer("acc", [_input(grpcclient, 20.0)], sequence_id=9))
        h.append(http.infer("acc", [_input(httpclient, 3.0)], sequence_id=7, sequence_end=True))
        g.append(grpc.infer("acc", [_input(grpcclient, 30.0)], sequence_id=9, sequence_end=True))
        assert [_sums(a) for a in h] == [(1.0, 0, 7.0), (3.0, 0, 7.0), (6.0, 1, 7.0)]
        assert [_sums(a) for a in g] == [(10.0, 0, 9.0), (30.0, 0, 9.0), (60.0, 1, 9.0)]
        # the state output is the server's: clients neither see it nor may ask for it
        assert h[0].as_numpy("STATE_OUT") is None
        with pytest.raises(InferenceServerException, match="unexpected inference output 'STATE_OUT'"):
            http.infer("acc", [_input(httpclient, 1.0)], sequence_id=3, sequence_start=True,
                       outputs=[httpclient.InferRequestedOutput("STATE_OUT")])  # fmt: skip
        # a sequence that ended starts again from nothing
        assert _sums(http.infer("acc", [_input(httpclient, 5.0)], sequence_id=7, sequence_start=True))[0] == 5.0
        # metadata and config show what clients send; the control and state tensors under sequence_batching
        meta = http.get_model_metadata("acc")
        assert [i["name"] for i in meta["inputs"]] == ["INPUT"]
        assert [o["name"] for o in meta["outputs"]] == ["OUTPUT", "ENDED", "ID"]
        same_config_both_ways(http, grpc, "acc")  # gRPC shows every field HTTP shows
        config = grpc.get_model_config("acc", as_json=True)["config"]
        assert config["max_batch_size"] == 4 and [i["name"] for i in config["input"]] == ["INPUT"]
        seq = config["sequence_batching"]
        # no strategy in its config: Triton shows none (it runs direct), nor does polystack now (helper-113)
        assert seq["max_sequence_idle_microseconds"] == "1000000" and "direct" not in seq and "oldest" not in seq
        # protobuf's JSON leaves out enum value 0, START, as Triton's gRPC answer does
        assert [(c["name"], c["control"][0].get("kind", "START")) for c in seq["control_input"]] == [
            ("START", "START"), ("END", "CONTROL_SEQUENCE_END"), ("READY", "CONTROL_SEQUENCE_READY"),
            ("CORRID", "CONTROL_SEQUENCE_CORRID"),
        ]  # fmt: skip
        assert seq["state"] == [{"input_name": "STATE_IN", "output_name": "STATE_OUT", "data_type": "TYPE_FP32",
                                 "dims": ["1"]}]  # fmt: skip
        # statistics count each request, as Triton's do
        [stats] = http.get_inference_statistics("acc")["model_stats"]
        assert stats["inference_stats"]["success"]["count"] == 7 and stats["inference_stats"]["fail"]["count"] == 1


def test_a_sequence_model_whose_config_lists_some_outputs_answers_those_alone(tmp_path: Path) -> None:
    """As any model's: its metadata and answers hold the outputs its config lists (its state kept as ever)."""
    repo = sequence_repository(tmp_path / "models")
    config = (repo / "acc" / "config.pbtxt").read_text()
    listed = 'output [ { name: "OUTPUT", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
    (repo / "acc" / "config.pbtxt").write_text(config.replace("sequence_batching {", listed + "sequence_batching {", 1))
    port = free_port()
    with cli_server(tmp_path / "home", ["--model-repository", str(repo), "--grpc-port", "-1"], port, tmp_path / "s.log"):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert [o["name"] for o in http.get_model_metadata("acc")["outputs"]] == ["OUTPUT"]
        sums = [http.infer("acc", [_input(httpclient, v)], sequence_id=5, sequence_start=v == 1.0) for v in (1.0, 2.0)]
        assert [float(a.as_numpy("OUTPUT")[0, 0]) for a in sums] == [1.0, 3.0] and sums[1].as_numpy("ENDED") is None
        with pytest.raises(InferenceServerException, match="unexpected inference output 'ENDED'"):
            http.infer("acc", [_input(httpclient, 1.0)], sequence_id=5, outputs=[httpclient.InferRequestedOutput("ENDED")])
        assert float(http.infer("acc", [_input(httpclient, 4.0)], sequence_id=5).as_numpy("OUTPUT")[0, 0]) == 7.0
        http.close()


def test_the_requests_of_a_sequence_refused_each_say_what_to_do(tmp_path: Path) -> None:
    with _served(tmp_path, 300_000) as (_, port, grpc_port):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        for client, c in ((http, httpclient), (grpc, grpcclient)):
            with pytest.raises(InferenceServerException, match="must specify a non-zero or non-empty correlation ID"):
                client.infer("acc", [_input(c, 1.0)])
            with pytest.raises(InferenceServerException, match="must specify the START flag on the first request"):
                client.infer("acc", [_input(c, 1.0)], sequence_id=41)
            with pytest.raises(InferenceServerException, match=r"sequence batching control 'CORRID' data-type is 'BYTES', but model 'acc' expects '\w+': it takes whole-number"):
                client.infer("acc", [_input(c, 1.0)], sequence_id="abc", sequence_start=True)
            two = c.InferInput("INPUT", [2, 1], "FP32")
            two.set_data_from_numpy(np.ones((2, 1), np.float32))
            with pytest.raises(InferenceServerException, match="must specify batch-size 1 due to requirements"):
                client.infer("acc", [two], sequence_id=42, sequence_start=True)
        # after its END, and after max_sequence_idle_microseconds (0.3 s) without a request, a sequence is over
        http.infer("acc", [_input(httpclient, 1.0)], sequence_id=5, sequence_start=True, sequence_end=True)
        with pytest.raises(InferenceServerException, match="START flag"):
            http.infer("acc", [_input(httpclient, 1.0)], sequence_id=5)
        assert _sums(http.infer("acc", [_input(httpclient, 1.0)], sequence_id=6, sequence_start=True))[0] == 1.0
        assert _sums(http.infer("acc", [_input(httpclient, 2.0)], sequence_id=6))[0] == 3.0
        time.sleep(0.5)
        with pytest.raises(InferenceServerException, match="START flag"):
            http.infer("acc", [_input(httpclient, 1.0)], sequence_id=6)
        # a parameter of the wrong type, over raw HTTP
        body = json.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}],
                           "parameters": {"sequence_id": 8, "sequence_start": "yes"}}).encode()  # fmt: skip
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/acc/infer", body, method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        error = json.load(refused.value)["error"]
        assert refused.value.code == 400 and "'sequence_start' parameter is 'yes'" in error
        assert error.startswith("Unable to parse 'sequence_start': attempt to access JSON non-boolean as boolean")
        assert http.is_server_live() and http.is_model_ready("acc")
        # helper-113 against tritonserver 2.51: a string ID in Triton's words as it is (no quotes), its 128-character
        # limit (UNIMPLEMENTED), and gRPC's parameter types for sequence_id and the flags, in Triton's words
        with pytest.raises(InferenceServerException) as e:
            http.infer("acc", [_input(httpclient, 1.0)], sequence_id="x" * 129, sequence_start=True)
        assert e.value.status() == "501" and "string correlation ID cannot be longer than 128 characters" in str(e.value)
        import grpc as grpc_lib
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        with grpc_lib.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            for key, field, value, words in (
                ("sequence_id", "uint64_param", 43, "expected int64_param or string_param."),
                ("sequence_id", "double_param", 43.0, "expected int64_param or string_param."),
                ("sequence_start", "int64_param", 1, "expected bool_param."),
                ("sequence_end", "string_param", "true", "expected bool_param."),
            ):
                req = service_pb2.ModelInferRequest(model_name="acc", raw_input_contents=[np.float32(1).tobytes()])
                req.inputs.add(name="INPUT", datatype="FP32", shape=[1, 1])
                setattr(req.parameters[key], field, value)
                with pytest.raises(grpc_lib.RpcError) as refused_rpc:
                    stub.ModelInfer(req, timeout=10)
                assert refused_rpc.value.code() == grpc_lib.StatusCode.INVALID_ARGUMENT
                assert refused_rpc.value.details() == f"invalid value type for '{key}' parameter, {words}", key


def test_a_grpc_stream_runs_many_sequences_at_once_each_in_order(tmp_path: Path) -> None:
    answers: queue.Queue[Any] = queue.Queue()
    with _served(tmp_path) as (_, _port, grpc_port):
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        grpc.start_stream(callback=lambda result, error: answers.put((result, error)))
        try:
            for step in range(5):  # 6 sequences, their requests sent back to back without waiting
                for sid in range(1, 7):
                    grpc.async_stream_infer(
                        "acc", [_input(grpcclient, float(sid))], request_id=f"{sid}-{step}", sequence_id=sid,
                        sequence_start=step == 0, sequence_end=step == 4,
                    )  # fmt: skip
            got: dict[str, float] = {}
            for _ in range(30):
                result, error = answers.get(timeout=30)
                assert error is None, error
                got[result.get_response().id] = float(result.as_numpy("OUTPUT")[0, 0])
        finally:
            grpc.stop_stream()
    assert got == {f"{sid}-{step}": float(sid * (step + 1)) for sid in range(1, 7) for step in range(5)}


def test_a_stream_reads_on_while_its_next_answer_waits_for_requests_behind_it(tmp_path: Path) -> None:
    """Answers go out in request order, so a request waiting for a sequence slot holds back the answers of
    those after it; the stream must read on (up to its limit of unsent answers), or the END that frees the
    slot, sent behind them, is never read (helper-51's review: the stream stalled until the sequences went
    idle, then failed their later requests)."""
    answers: queue.Queue[Any] = queue.Queue()
    with _served(tmp_path, 20_000_000) as (_, _port, grpc_port):  # 20 s idle: a stall shows as one
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        grpc.start_stream(callback=lambda result, error: answers.put((result, error)))
        sent: list[str] = []

        def send(sid: int, rid: str, start: bool = False, end: bool = False) -> None:
            grpc.async_stream_infer(
                "acc", [_input(grpcclient, 1.0)], request_id=rid, sequence_id=sid, sequence_start=start,
                sequence_end=end,
            )  # fmt: skip
            sent.append(rid)

        try:
            for sid in range(1, 5):  # the model's 4 slots taken
                send(sid, f"{sid}-start", start=True)
            send(9, "waits", start=True, end=True)  # in the backlog until a sequence ends
            for k in range(80):
                send(1, f"1-{k}")
            for sid in range(1, 5):
                send(sid, f"{sid}-end", end=True)
            got = []
            for _ in sent:
                result, error = answers.get(timeout=10)
                assert error is None, error
                got.append(result.get_response().id)
        finally:
            grpc.stop_stream()
    assert got == sent


def test_sigterm_lets_the_sequences_held_finish_over_http_grpc_and_streams_and_refuses_new_ones(
    tmp_path: Path,
) -> None:
    """As Triton's exit: the drain takes the requests of the sequences the server holds (HTTP on its open
    connection, gRPC calls, a stream) until they end, refuses new sequences and other gRPC calls (UNAVAILABLE),
    then exits 0, without waiting out the sequences' idle time or the drain timeout."""
    repo, port, grpc_port = sequence_repository(tmp_path / "models", 20_000_000), free_port(), free_port()
    args = ["--model-repository", str(repo), "--grpc-port", str(grpc_port), "--drain-timeout-s", "25"]
    answers: queue.Queue[Any] = queue.Queue()
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log") as proc:
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")  # one keep-alive connection
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        streamer = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        streamer.start_stream(callback=lambda result, error: answers.put((result, error)))

        def streamed(value: float, **flags: Any) -> float:
            streamer.async_stream_infer("acc", [_input(grpcclient, value)], sequence_id=3, **flags)
            result, error = answers.get(timeout=10)
            assert error is None, error
            return float(result.as_numpy("OUTPUT")[0, 0])

        try:
            http.infer("acc", [_input(httpclient, 1.0)], sequence_id=1, sequence_start=True)
            grpc.infer("acc", [_input(grpcclient, 10.0)], sequence_id=2, sequence_start=True)
            assert streamed(100.0, sequence_start=True) == 100.0
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            assert proc.poll() is None and not http.is_server_ready()
            assert _sums(http.infer("acc", [_input(httpclient, 2.0)], sequence_id=1))[0] == 3.0
            assert _sums(grpc.infer("acc", [_input(grpcclient, 20.0)], sequence_id=2))[0] == 30.0
            assert streamed(200.0) == 300.0
            with pytest.raises(InferenceServerException, match="Server is stopping") as refused:
                http.infer("acc", [_input(httpclient, 1.0)], sequence_id=4, sequence_start=True)
            assert refused.value.status() == "503"
            with pytest.raises(InferenceServerException, match="Server is stopping") as refused:
                grpc.infer("acc", [_input(grpcclient, 1.0)], sequence_id=5, sequence_start=True)
            assert refused.value.status() == "StatusCode.UNAVAILABLE"
            with pytest.raises(InferenceServerException, match="START flag") as refused:  # held by none: as ever
                grpc.infer("acc", [_input(grpcclient, 1.0)], sequence_id=8)
            assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
            streamer.async_stream_infer("acc", [_input(grpcclient, 1.0)], sequence_id=6, sequence_start=True)
            assert "Server is stopping" in str(answers.get(timeout=10)[1])
            # an inference request that is no sequence's is not run meanwhile, on any protocol (helper-143: HTTP's ran)
            with pytest.raises(InferenceServerException, match="runs only the requests of the sequences") as refused:
                http.infer("acc", [_input(httpclient, 1.0)])  # no sequence_id: none of a sequence
            assert refused.value.status() == "503"
            assert _sums(http.infer("acc", [_input(httpclient, 3.0)], sequence_id=1, sequence_end=True))[:2] == (6.0, 1)
            assert _sums(grpc.infer("acc", [_input(grpcclient, 30.0)], sequence_id=2, sequence_end=True))[:2] == (60.0, 1)
            ended = time.monotonic()
            assert streamed(300.0, sequence_end=True) == 600.0
            assert proc.wait(timeout=15) == 0
            assert time.monotonic() - ended < 5  # the last sequence ended: the drain is over
        finally:
            streamer.stop_stream()


def test_a_second_signal_ends_the_sequences_the_drain_waits_for(tmp_path: Path) -> None:
    """A sequence whose client went away holds the drain until it idles (20 s here) or the drain timeout passes; a
    second SIGTERM (or Ctrl-C) ends it at once (helper-143: the server waited out the whole timeout)."""
    repo, port = sequence_repository(tmp_path / "models", 20_000_000), free_port()
    args = ["--model-repository", str(repo), "--grpc-port", "-1", "--drain-timeout-s", "25"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log") as proc:
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        http.infer("acc", [_input(httpclient, 1.0)], sequence_id=1, sequence_start=True)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert proc.poll() is None  # it waits for the sequence
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        # exit 1: the drain cut a sequence off, as tritonserver exits 1 when its exit timeout finds one live
        assert proc.wait(timeout=15) == 1 and time.monotonic() - signalled < 5
    log = (tmp_path / "serve.log").read_text()
    assert "the sequences held end unfinished" in log and '"sequences":1' in log.replace(" ", "")
    assert "exiting past the drain timeout (exit 1)" in log


def test_a_sequence_models_warm_up_samples_run_on_the_model_with_the_inputs_they_list(tmp_path: Path) -> None:
    """helper-173 (Triton's L0_warmup): Triton runs a sequence model's samples on its instances, past the sequence
    batcher, with the control and state inputs the sample lists; polystack refused the config, and so the whole start.
    A sample that leaves out an input the model takes is refused, saying which."""
    repo = sequence_repository(tmp_path / "models")
    inputs = [("INPUT", "TYPE_FP32"), ("START", "TYPE_INT32"), ("END", "TYPE_INT32"), ("READY", "TYPE_INT32"),
              ("STATE_IN", "TYPE_FP32"), ("CORRID", "TYPE_UINT64")]  # fmt: skip

    def warmup(listed: list[tuple[str, str]]) -> str:
        given = " ".join(f'inputs {{ key: "{n}" value: {{ data_type: {t} dims: [ 1 ] zero_data: true }} }}' for n, t in listed)
        return f'model_warmup [ {{ name: "seq" batch_size: 2 count: 2 {given} }} ]\n'

    config = repo / "acc" / "config.pbtxt"
    config.write_text(ACC % {"idle": 1_000_000} + warmup(inputs))
    port = free_port()
    args = ["--model-repository", str(repo), "--grpc-port", "-1", "--model-control-mode", "explicit",
            "--load-model", "acc"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_model_ready("acc")
        assert client.get_inference_statistics("acc")["model_stats"][0]["execution_count"] == 0  # not requests
        assert _sums(client.infer("acc", [_input(httpclient, 2.0)], sequence_id=5, sequence_start=True))[0] == 2.0
        assert _sums(client.infer("acc", [_input(httpclient, 3.0)], sequence_id=5))[0] == 5.0  # its own state
        config.write_text(ACC % {"idle": 1_000_000} + warmup(inputs[:1]))
        with pytest.raises(InferenceServerException, match=r"model_warmup\[0\] \(seq\) gives no data for input 'START'"):
            client.load_model("acc")
        assert _sums(client.infer("acc", [_input(httpclient, 4.0)], sequence_id=5))[0] == 9.0  # still served
    assert '"samples": ["seq"]' in (tmp_path / "serve.log").read_text().replace('":["', '": ["')


def test_a_model_without_sequence_batching_ignores_sequence_parameters_as_triton_does(tmp_path: Path) -> None:
    """tritonserver 2.51 answers them as any request (helper-107): refusing them broke clients that send a
    correlation ID whatever the model (session-routing wrappers, perf_analyzer's --sequence-id-range)."""
    repo = sequence_repository(tmp_path / "models")
    (repo / "plain" / "1").mkdir(parents=True)
    from polystack.examples import mlp_onnx

    mlp_onnx(repo / "plain" / "1" / "model.onnx", sizes=(1, 2))
    port, gport = free_port(), free_port()
    args = ["--model-repository", str(repo), "--grpc-port", str(gport)]
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        x = httpclient.InferInput("x", [1, 1], "FP32")
        x.set_data_from_numpy(np.ones((1, 1), np.float32))
        want = http.infer("plain", [x]).as_numpy("y")
        for _ in range(2):
            got = http.infer("plain", [x], sequence_id=1, sequence_start=True, sequence_end=True).as_numpy("y")
            np.testing.assert_array_equal(got, want)
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{gport}")
        gx = grpcclient.InferInput("x", [1, 1], "FP32")
        gx.set_data_from_numpy(np.ones((1, 1), np.float32))
        np.testing.assert_array_equal(grpc.infer("plain", [gx], sequence_id="s", sequence_start=True).as_numpy("y"), want)
    said = [line for line in (tmp_path / "serve.log").read_text().splitlines() if "sequence parameters" in line]
    assert len(said) == 1 and '"model":"plain"' in said[0]


def test_a_load_with_get_configs_answer_reads_the_initial_state_from_the_models_folder(tmp_path: Path) -> None:
    """Triton reads a load's config against the model's repository folder: its initial_state/ data file too. (START
    reaches the model as 0 here, so that it adds to the initial state instead of starting from 0.)"""
    repo = sequence_repository(tmp_path / "models")
    (repo / "acc" / "initial_state").mkdir()
    (repo / "acc" / "initial_state" / "s.bin").write_bytes(np.array([100.0], np.float32).tobytes())
    initial = 'initial_state [ { data_type: TYPE_FP32, dims: [ 1 ], name: "s", data_file: "s.bin" } ] } ]'
    (repo / "acc" / "config.pbtxt").write_text(
        (ACC % {"idle": 1_000_000})
        .replace("dims: [ 1 ] } ]\n}", f"dims: [ 1 ], {initial}\n}}")
        .replace(
            "CONTROL_SEQUENCE_START, int32_false_true: [ 0, 1 ]", "CONTROL_SEQUENCE_START, int32_false_true: [ 0, 0 ]"
        )
    )
    port = free_port()
    with cli_server(
        tmp_path / "home", ["--model-repository", str(repo), "--allow-model-control", "--grpc-port", "-1"], port,
        tmp_path / "log",
    ):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert _sums(http.infer("acc", [_input(httpclient, 1.0)], sequence_id=1, sequence_start=True))[0] == 101.0
        config = http.get_model_config("acc")
        assert config["sequence_batching"]["state"][0]["initial_state"][0]["data_file"] == "s.bin"
        (repo / "acc" / "initial_state" / "s.bin").write_bytes(np.array([200.0], np.float32).tobytes())
        http.load_model("acc", config=json.dumps({**config, "sequence_batching": {**config["sequence_batching"],
                                                   "max_sequence_idle_microseconds": 2_000_000}}))  # fmt: skip
        assert _sums(http.infer("acc", [_input(httpclient, 1.0)], sequence_id=1, sequence_start=True))[0] == 201.0


def test_a_reload_ends_the_sequences_and_ray_refuses_sequence_models(tmp_path: Path) -> None:
    with _served(tmp_path, 1_000_000, "--allow-model-control") as (repo, port, _):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert _sums(http.infer("acc", [_input(httpclient, 1.0)], sequence_id=1, sequence_start=True))[0] == 1.0
        (repo / "acc" / "config.pbtxt").write_text(ACC % {"idle": 2_000_000})
        http.load_model("acc")  # a new config: a new instance, which knows none of the old one's sequences
        config = http.get_model_config("acc")
        assert config["sequence_batching"]["max_sequence_idle_microseconds"] == 2_000_000
        with pytest.raises(InferenceServerException, match="START flag"):
            http.infer("acc", [_input(httpclient, 2.0)], sequence_id=1)
        assert _sums(http.infer("acc", [_input(httpclient, 2.0)], sequence_id=1, sequence_start=True))[0] == 2.0
    # Ray Serve would spread a sequence's requests over replicas, each with its own sequences: refused before Ray
    # (one replica serves them: tests/jobs/test_ray_serve.py)
    ray = ["--model-repository", str(repo), "--engine", "ray", "--http-port", "8123", "--ray-address", "127.0.0.1:1"]
    for scale in (["--replicas", "2"], ["--autoscale", "1:3"]):
        line = refused_at_start(tmp_path, [*ray, *scale])
        assert "model 'acc:1' is a sequence model" in line and "--replicas 1" in line and "--engine local" in line


def test_ray_serves_a_sequence_model_with_one_replica_only(tmp_path: Path) -> None:
    """What the CLI checks before Ray starts, with the most replicas the deployment may have."""
    from polystack.server.app import ServeConfig
    from polystack.server.model_config import ConfigFile
    from polystack.server.ray_serve import check_before_ray

    store, _ = _register(tmp_path)
    config = ServeConfig(http_port=8123, model_configs={"acc": ConfigFile(config_text.as_json(ACC % {"idle": 1000}))})
    check_before_ray(store, config, "127.0.0.1:1", most_replicas=1)  # a cluster's address: no port is tried here
    with pytest.raises(InvalidRequest, match="each of the 2 replicas would keep its own sequences"):
        check_before_ray(store, config, "127.0.0.1:1", most_replicas=2)


PIPE = """
platform: "ensemble"
max_batch_size: 4
input [ { name: "A", data_type: TYPE_FP32, dims: [ 1 ] } ]
output [ { name: "B", data_type: TYPE_FP32, dims: [ 1 ] } ]
ensemble_scheduling { step [
  { model_name: "acc", input_map { key: "INPUT" value: "A" }, output_map { key: "OUTPUT" value: "SUM" } },
  { model_name: "neg", input_map { key: "a" value: "SUM" }, output_map { key: "b" value: "B" } }
] }
"""


def test_an_ensemble_carries_a_sequence_to_its_sequence_model_steps(tmp_path: Path) -> None:
    """As Triton's ensembles do: the request's correlation ID and flags reach the steps running sequence models;
    the other steps run as for any request."""
    from onnx import TensorProto

    repo = sequence_repository(tmp_path / "models")
    (repo / "neg" / "1").mkdir(parents=True)
    single_op(repo / "neg" / "1" / "model.onnx", "Neg", TensorProto.FLOAT, 1, "a", [("b", "Neg")])
    (repo / "pipe" / "1").mkdir(parents=True)
    (repo / "pipe" / "config.pbtxt").write_text(PIPE)
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(repo), "--grpc-port", str(grpc_port)]
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log") as proc:
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        sums = []
        for step, (client, c) in enumerate(((http, httpclient), (grpc, grpcclient), (http, httpclient))):
            a = c.InferInput("A", [1, 1], "FP32")
            a.set_data_from_numpy(np.array([[float(step + 1)]], np.float32))
            answer = client.infer("pipe", [a], sequence_id=11, sequence_start=step == 0, sequence_end=step == 2)
            sums.append(float(answer.as_numpy("B")[0, 0]))
        assert sums == [-1.0, -3.0, -6.0]
        a = httpclient.InferInput("A", [1, 1], "FP32")
        a.set_data_from_numpy(np.ones((1, 1), np.float32))
        # Triton's words, as its QA sequence_batcher_test matches them (helper-206), then the step
        words = r"in ensemble 'pipe', inference request to model 'acc' must specify a non-zero or non-empty correlation"
        with pytest.raises(InferenceServerException, match=words + r" ID.* \[step 0 \(acc\)\]"):
            http.infer("pipe", [a])
        with pytest.raises(InferenceServerException, match="START flag"):  # sequence 11 ended with its END
            http.infer("pipe", [a], sequence_id=11)
        [neg] = http.get_inference_statistics("neg")["model_stats"]
        assert neg["inference_stats"]["success"]["count"] == 3
        # a sequence through the ensemble finishes during the drain too, its gRPC calls taken
        a = grpcclient.InferInput("A", [1, 1], "FP32")
        a.set_data_from_numpy(np.ones((1, 1), np.float32))
        grpc.infer("pipe", [a], sequence_id=12, sequence_start=True)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert float(grpc.infer("pipe", [a], sequence_id=12, sequence_end=True).as_numpy("B")[0, 0]) == -2.0
        assert proc.wait(timeout=15) == 0


def test_an_ensemble_running_a_sequence_model_keeps_no_answers(tmp_path: Path) -> None:
    """Its answers depend on the sequences' state: a response cache on it is refused, as on the model."""
    from onnx import TensorProto

    repo = sequence_repository(tmp_path / "models")
    (repo / "neg" / "1").mkdir(parents=True)
    single_op(repo / "neg" / "1" / "model.onnx", "Neg", TensorProto.FLOAT, 1, "a", [("b", "Neg")])
    (repo / "pipe" / "1").mkdir(parents=True)
    (repo / "pipe" / "config.pbtxt").write_text(PIPE + "response_cache { enable: true }\n")
    args = ["--model-repository", str(repo), "--cache-config", "local,size=1000000"]
    last = refused_after_loads(tmp_path, args)  # once its models loaded
    assert "Response Cache does not currently support model 'pipe'" in last and "'acc'" in last, last
    # a sequence model in two steps: they would share its one sequence
    twice = PIPE.replace('model_name: "neg", input_map { key: "a"', 'model_name: "acc", input_map { key: "INPUT"')
    (repo / "pipe" / "config.pbtxt").write_text(twice.replace('key: "b" value: "B"', 'key: "OUTPUT" value: "B"'))
    assert "runs sequence model 'acc' in two steps" in refused_after_loads(tmp_path, args)


# -- the sequence batcher on its own ------------------------------------------------------------------
def _register(tmp_path: Path) -> tuple[Store, ModelRecord]:
    """The accumulator, registered in a real store."""
    from onnx import TensorProto

    store = Store.at(tmp_path / "home")
    imported = import_model(accumulator_onnx(tmp_path / "acc.onnx", TensorProto.UINT64), tmp_path / "import")
    record, _ = store.register(imported.artifact, name="acc", format=imported.format, signature=imported.signature)
    return store, record


@pytest.fixture
def acc_entry(tmp_path: Path) -> Iterator[LoadedEntry]:
    """The accumulator loaded by the engine (ONNX Runtime)."""
    store, record = _register(tmp_path)
    entry = Engine(store).build(record.ref)
    yield entry
    entry.model.close()


def _policy(**kw: Any) -> SequencePolicy:
    controls = (
        Control("start", "START", DType.INT32), Control("end", "END", DType.INT32),
        Control("ready", "READY", DType.INT32), Control("corrid", "CORRID", DType.UINT64),
    )  # fmt: skip
    state = State("STATE_IN", "STATE_OUT", DType.FP32, (1,))
    return SequencePolicy(controls=controls, states=(state,), **{"max_batch_size": 4, **kw})


def _batcher(entry: LoadedEntry, policy: SequencePolicy) -> SequenceBatcher:
    return SequenceBatcher(dataclasses.replace(entry, shown=policy.shown(entry.model.signature)), policy)


def _x(value: float) -> dict[str, np.ndarray]:
    return {"INPUT": np.array([[value]], np.float32)}


def test_requests_of_several_sequences_run_together_one_row_each(acc_entry: LoadedEntry) -> None:
    batcher = _batcher(acc_entry, _policy(strategy="oldest", max_queue_delay_ms=200.0))

    async def main() -> list[list[float]]:
        async def sequence(sid: int) -> list[float]:
            sums = []
            for step in range(3):
                flags = Flags(sid, start=step == 0, end=step == 2)
                out = await batcher.infer_async(_x(float(sid)), None, flags)
                sums.append(float(out["OUTPUT"][0, 0]))
            return sums

        return await asyncio.gather(*(sequence(sid) for sid in (1, 2, 3, 4)))

    try:
        assert asyncio.run(main()) == [[s, 2 * s, 3 * s] for s in (1.0, 2.0, 3.0, 4.0)]
        stats = acc_entry.stats.to_dict()
        # 4 sequences of 3 requests, each batch one request of each: 3 runs of 4 rows
        assert stats["inference_count"] == 12 and stats["execution_count"] == 3
        assert [b["batch_size"] for b in stats["batch_stats"]] == [4]
        assert batcher.active == 0
    finally:
        batcher.close()


def test_a_string_id_is_written_as_triton_writes_it_in_the_start_refusal(tmp_path: Path) -> None:
    """helper-113: tritonserver 2.51 writes a string ID as it is ("for sequence never to model"), not quoted."""
    entry = _summing(tmp_path)  # no CORRID control: string IDs are taken
    batcher = _batcher(entry, _summing_policy())

    async def main() -> None:
        with pytest.raises(InvalidRequest) as e:
            await batcher.infer_async(_x(1.0), None, Flags("never"))
        assert str(e.value).startswith(
            "inference request for sequence never to model 'sum' must specify the START flag on the first request of "
            "the sequence"
        ), e.value

    try:
        asyncio.run(main())
    finally:
        batcher.close()


def test_sequences_past_the_slots_wait_until_one_ends_or_goes_idle(acc_entry: LoadedEntry) -> None:
    # direct: max_batch_size 1 x 1 instance = one slot; the second sequence waits for the first to end
    batcher = _batcher(acc_entry, _policy(max_batch_size=1, idle_s=0.2))

    async def main() -> None:
        first = await batcher.infer_async(_x(1.0), None, Flags(1, start=True))
        assert float(first["OUTPUT"][0, 0]) == 1.0
        waiting = asyncio.ensure_future(batcher.infer_async(_x(5.0), None, Flags(2, start=True)))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # sequence 1 holds the slot
        await batcher.infer_async(_x(2.0), None, Flags(1, end=True))  # it ends: sequence 2 runs
        assert float((await asyncio.wait_for(waiting, 5))["OUTPUT"][0, 0]) == 5.0
        third = asyncio.ensure_future(batcher.infer_async(_x(7.0), None, Flags(3, start=True)))
        started = time.monotonic()
        out = await asyncio.wait_for(third, 5)  # sequence 2 goes idle after 0.2 s: its slot is freed
        assert float(out["OUTPUT"][0, 0]) == 7.0 and time.monotonic() - started >= 0.15
        with pytest.raises(InvalidRequest, match="START flag"):
            await batcher.infer_async(_x(1.0), None, Flags(2))

    try:
        asyncio.run(main())
    finally:
        batcher.close()


def test_a_start_on_a_running_sequence_starts_it_again(acc_entry: LoadedEntry) -> None:
    batcher = _batcher(acc_entry, _policy())

    async def main() -> list[float]:
        sums = []
        for value, flags in ((1.0, Flags(3, start=True)), (2.0, Flags(3)), (4.0, Flags(3, start=True)),
                             (8.0, Flags(3, end=True))):  # fmt: skip
            sums.append(float((await batcher.infer_async(_x(value), None, flags))["OUTPUT"][0, 0]))
        with pytest.raises(InvalidRequest, match="takes whole-number correlation IDs"):
            await batcher.infer_async(_x(1.0), None, Flags("a", start=True))
        return sums

    try:
        assert asyncio.run(main()) == [1.0, 3.0, 4.0, 12.0]
        assert batcher.active == 0
    finally:
        batcher.close()


def test_a_sequence_model_without_a_batch_dimension_runs_one_request_a_call(tmp_path: Path) -> None:
    store = Store.at(tmp_path / "home")
    imported = import_model(accumulator_onnx(tmp_path / "acc0.onnx", batched=False), tmp_path / "import")
    record, _ = store.register(imported.artifact, name="acc0", format=imported.format, signature=imported.signature)
    text = (
        'max_batch_size: 0\nsequence_batching { control_input [ { name: "START", control [ { kind: '
        'CONTROL_SEQUENCE_START, int32_false_true: [ 0, 1 ] } ] }, { name: "END", control [ { kind: '
        'CONTROL_SEQUENCE_END, int32_false_true: [ 0, 1 ] } ] }, { name: "READY", control [ { kind: '
        'CONTROL_SEQUENCE_READY, int32_false_true: [ 0, 1 ] } ] } ]\n state [ { input_name: "STATE_IN", '
        'output_name: "STATE_OUT", data_type: TYPE_FP32, dims: [ 1 ], initial_state [ { data_type: TYPE_FP32, '
        'dims: [ 1 ], name: "zero", zero_data: true } ] } ] }\n'
    )
    policy = model_config.read(config_text.as_json(text), record, default_spec(store, record), None).sequence
    # Triton's two CPU instances where the config gives none: a slot each
    assert policy is not None and policy.max_batch_size == 0 and policy.slots == 2
    entry = Engine(store).build(record.ref)
    batcher = _batcher(entry, policy)

    async def main() -> list[float]:
        async def one(sid: int) -> list[float]:
            return [
                float(
                    (await batcher.infer_async({"INPUT": np.array([float(sid)], np.float32)}, None, flags))["OUTPUT"][0]
                )
                for flags in (Flags(sid, start=True), Flags(sid), Flags(sid, end=True))
            ]

        return await asyncio.gather(one(1), one(2))

    try:
        assert asyncio.run(main()) == [[1.0, 2.0, 3.0], [2.0, 4.0, 6.0]]  # one slot: sequence 2 waited for 1
        assert entry.stats.to_dict()["execution_count"] == 6
    finally:
        batcher.close()
        entry.model.close()


def _summing(tmp_path: Path, corrid: int | None = None) -> LoadedEntry:
    """INPUT FP32[batch, -1] -> OUTPUT = (START ? 0 : STATE_IN) + the sum of INPUT's row (STATE_OUT the same);
    with ``corrid``, ID = CORRID cast to FP32 (a string that is not a number fails the call)."""
    import onnx
    from onnx import TensorProto, helper

    inputs = [
        helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["batch", "n"]),
        helper.make_tensor_value_info("START", TensorProto.INT32, ["batch", 1]),
        helper.make_tensor_value_info("STATE_IN", TensorProto.FLOAT, ["batch", 1]),
    ]
    nodes = [
        helper.make_node("ReduceSum", ["INPUT", "axes"], ["total"], keepdims=1),
        helper.make_node("Cast", ["START"], ["s"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "s"], ["keep"]),
        helper.make_node("Mul", ["STATE_IN", "keep"], ["kept"]),
        helper.make_node("Add", ["kept", "total"], ["OUTPUT"]),
        helper.make_node("Identity", ["OUTPUT"], ["STATE_OUT"]),
    ]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 1]) for n in ("OUTPUT", "STATE_OUT")]
    if corrid is not None:
        inputs.append(helper.make_tensor_value_info("CORRID", corrid, ["batch", 1]))
        nodes.append(helper.make_node("Cast", ["CORRID"], ["ID"], to=TensorProto.FLOAT))
        outputs.append(helper.make_tensor_value_info("ID", TensorProto.FLOAT, ["batch", 1]))
    initial = [
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
    ]
    graph = helper.make_graph(nodes, "summing", inputs, outputs, initializer=initial)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="polystack-tests")
    model.ir_version = 8
    onnx.save_model(model, str(tmp_path / "sum.onnx"))
    store = Store.at(tmp_path / "home")
    imported = import_model(tmp_path / "sum.onnx", tmp_path / "import")
    record, _ = store.register(imported.artifact, name="sum", format=imported.format, signature=imported.signature)
    return Engine(store).build(record.ref)


def _summing_policy(corrid: DType | None = None, **kw: Any) -> SequencePolicy:
    controls = [Control("start", "START", DType.INT32)] + ([Control("corrid", "CORRID", corrid)] if corrid else [])
    state = State("STATE_IN", "STATE_OUT", DType.FP32, (1,))
    return SequencePolicy(controls=tuple(controls), states=(state,), **{"max_batch_size": 4, **kw})


def test_requests_of_different_shapes_run_in_calls_of_their_own(tmp_path: Path) -> None:
    entry = _summing(tmp_path)
    batcher = _batcher(entry, _summing_policy(strategy="oldest", max_queue_delay_ms=100.0))

    async def main() -> list[float]:
        calls = [
            batcher.infer_async({"INPUT": np.ones((1, n), np.float32) * n}, None, Flags(n, start=True, end=True))
            for n in (2, 1, 3, 2)
        ]
        return [float(out["OUTPUT"][0, 0]) for out in await asyncio.gather(*calls)]

    try:
        assert asyncio.run(main()) == [4.0, 1.0, 9.0, 4.0]  # each its own row's sum, never another's
        stats = entry.stats.to_dict()
        assert stats["execution_count"] == 3 and {b["batch_size"] for b in stats["batch_stats"]} == {1, 2}
    finally:
        batcher.close()
        entry.model.close()


def test_a_failing_row_fails_alone_and_queue_times_count_once(tmp_path: Path) -> None:
    from onnx import TensorProto

    entry = _summing(tmp_path, TensorProto.STRING)
    batcher = _batcher(entry, _summing_policy(DType.BYTES, strategy="oldest", max_queue_delay_ms=100.0))

    async def main() -> list[Any]:
        calls = [
            batcher.infer_async({"INPUT": np.ones((1, 1), np.float32)}, None, Flags(sid, start=True, end=True))
            for sid in ("7", "abc", "9")
        ]
        return await asyncio.gather(*calls, return_exceptions=True)

    try:
        good, bad, other = asyncio.run(main())
        assert float(good["ID"][0, 0]) == 7.0 and float(other["ID"][0, 0]) == 9.0
        assert isinstance(bad, Exception) and "Cast" in str(bad)  # the runtime's own words
        durations = entry.stats.to_dict()["inference_stats"]
        # once each (not again on the retry one by one), and for successes only, as Triton's statistics count them
        assert durations["queue"]["count"] == 2 and durations["success"]["count"] == 2
        assert durations["fail"]["count"] == 1 and batcher.active == 0
    finally:
        batcher.close()
        entry.model.close()


def test_a_cancelled_request_ends_its_sequence_and_its_other_queued_requests_fail(acc_entry: LoadedEntry) -> None:
    """As Triton's sequence batcher (helper-72: the sequence went on without the request, and its END answered
    sums missing a step as successes): a request cancelled before it ran ends its sequence."""
    batcher = _batcher(acc_entry, _policy(strategy="oldest", max_queue_delay_ms=300.0, idle_s=5.0))

    async def main() -> None:
        first = asyncio.ensure_future(batcher.infer_async(_x(1.0), None, Flags(1, start=True)))
        await asyncio.sleep(0.01)
        rest = asyncio.ensure_future(batcher.infer_async(_x(5.0), None, Flags(1, end=True)))
        await asyncio.sleep(0.01)
        first.cancel()  # its client went away before it ran
        with pytest.raises(Cancelled, match="was cancelled before it ran, which ends its sequence"):
            await asyncio.wait_for(rest, 5)
        assert batcher.depth == 0 and batcher.active == 0
        with pytest.raises(InvalidRequest, match="must specify the START flag"):  # the sequence is gone
            await batcher.infer_async(_x(2.0), None, Flags(1))
        assert float((await batcher.infer_async(_x(2.0), None, Flags(1, start=True, end=True)))["OUTPUT"][0, 0]) == 2.0

    try:
        asyncio.run(main())
        assert batcher.depth == 0 and batcher.active == 0
    finally:
        batcher.close()


def test_a_cancelled_request_of_a_sequence_in_a_slot_ends_it_after_the_requests_before_it(
    acc_entry: LoadedEntry,
) -> None:
    """As Triton's sequence batcher (helper-73): in a slot, the requests queued before a cancelled one run; it and
    those after it fail; a cancellation after a timeout (which a slot makes moot) ends the sequence too."""
    batcher = _batcher(acc_entry, _policy(strategy="oldest", max_queue_delay_ms=400.0, idle_s=5.0))

    async def main() -> None:
        first = asyncio.ensure_future(batcher.infer_async(_x(1.0), None, Flags(1, start=True)))
        second = asyncio.ensure_future(batcher.infer_async(_x(2.0), None, Flags(1)))
        third = asyncio.ensure_future(batcher.infer_async(_x(4.0), None, Flags(1)))
        last = asyncio.ensure_future(batcher.infer_async(_x(8.0), None, Flags(1, end=True)))
        await asyncio.sleep(0.05)
        third.cancel()
        assert float((await first)["OUTPUT"][0, 0]) == 1.0
        assert float((await second)["OUTPUT"][0, 0]) == 3.0  # before the cancelled one: it ran
        with pytest.raises(Cancelled):
            await last  # after it: ended with the sequence
        with pytest.raises(InvalidRequest, match="must specify the START flag"):
            await batcher.infer_async(_x(2.0), None, Flags(1))
        # a timeout in a slot does not apply; a cancellation after it ends the sequence all the same
        timed = asyncio.ensure_future(batcher.infer_async(_x(1.0), None, Flags(2, start=True), timeout_s=0.05))
        await asyncio.sleep(0.1)  # past its timeout, before it runs (a lone request waits 0.4 s for others)
        timed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await timed
        await asyncio.sleep(0.5)
        with pytest.raises(InvalidRequest, match="must specify the START flag"):
            await batcher.infer_async(_x(2.0), None, Flags(2, end=True))

    try:
        asyncio.run(main())
        assert batcher.depth == 0 and batcher.active == 0
    finally:
        batcher.close()


def test_a_close_without_drain_fails_the_requests_kept_ahead_of_a_cancelled_one(acc_entry: LoadedEntry) -> None:
    """The requests queued before a cancelled one stay queued though their sequence is forgotten (helper-74: a
    close without drain, an unload, ran them instead of failing them with every other queued request)."""
    batcher = _batcher(acc_entry, _policy(strategy="oldest", max_queue_delay_ms=400.0, idle_s=5.0))

    async def main() -> None:
        first = asyncio.ensure_future(batcher.infer_async(_x(1.0), None, Flags(1, start=True)))
        second = asyncio.ensure_future(batcher.infer_async(_x(2.0), None, Flags(1)))
        third = asyncio.ensure_future(batcher.infer_async(_x(4.0), None, Flags(1, end=True)))
        await asyncio.sleep(0.05)  # all three wait for company (0.4 s)
        third.cancel()
        await asyncio.sleep(0.01)
        await asyncio.get_running_loop().run_in_executor(None, functools.partial(batcher.close, drain=False))
        for kept in (first, second):
            with pytest.raises(Unavailable, match="was unloaded before the request ran"):
                await asyncio.wait_for(kept, 5)

    try:
        asyncio.run(main())
        assert batcher.depth == 0 and acc_entry.stats.to_dict()["execution_count"] == 0
    finally:
        batcher.close()


class _Slow:
    """A model whose calls take 0.5 s each (recording what they ran): a sequence stays busy meanwhile."""

    def __init__(self, model: Any) -> None:
        self._model, self.calls = model, []

    def infer(self, inputs: dict[str, np.ndarray], outputs: Any = None) -> dict[str, np.ndarray]:
        self.calls.append(float(inputs["INPUT"][0, 0]))
        time.sleep(0.5)
        return self._model.infer(inputs, outputs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def test_a_close_without_drain_fails_what_a_busy_cancelled_sequence_keeps(acc_entry: LoadedEntry) -> None:
    """helper-77: with the sequence's request running (busy), the request kept ahead of a cancelled one was in none
    of the batcher's queues, so the close missed it and the running request's end queued it to run."""
    batcher = _batcher(acc_entry, _policy(strategy="oldest", max_queue_delay_ms=0.0, idle_s=5.0))
    batcher.model = slow = _Slow(batcher.model)

    async def main() -> None:
        first = asyncio.ensure_future(batcher.infer_async(_x(1.0), None, Flags(1, start=True)))
        await asyncio.sleep(0.1)  # running, for 0.5 s
        second = asyncio.ensure_future(batcher.infer_async(_x(2.0), None, Flags(1)))
        third = asyncio.ensure_future(batcher.infer_async(_x(4.0), None, Flags(1, end=True)))
        await asyncio.sleep(0.05)
        third.cancel()
        await asyncio.sleep(0.01)
        await asyncio.get_running_loop().run_in_executor(None, functools.partial(batcher.close, drain=False))
        assert float((await first)["OUTPUT"][0, 0]) == 1.0  # it was running: it finishes
        with pytest.raises(Unavailable, match="was unloaded before the request ran"):
            await asyncio.wait_for(second, 5)

    try:
        asyncio.run(main())
        assert slow.calls == [1.0]
    finally:
        batcher.close()


def test_a_timeout_ends_a_sequence_waiting_for_a_slot_and_not_one_holding_a_slot(acc_entry: LoadedEntry) -> None:
    """As Triton's sequence batcher: a timeout bounds a sequence's wait for a slot (every request it queued fails,
    in Triton's words, and it ends); once it holds a slot its requests run whatever their timeouts (helper-72: a
    request timed out in its slot was dropped, and the sequence's END answered a sum missing it)."""
    # one slot (direct, a batch of 1): sequence 2 waits for it, and its timeout ends it, not the idle time
    batcher = _batcher(acc_entry, _policy(max_batch_size=1, idle_s=5.0))

    async def waiting() -> None:
        await batcher.infer_async(_x(1.0), None, Flags(1, start=True))
        started = time.monotonic()
        later = asyncio.ensure_future(batcher.infer_async(_x(2.0), None, Flags(2)))  # no START: refused at once
        with pytest.raises(InvalidRequest):
            await later
        first = asyncio.ensure_future(batcher.infer_async(_x(1.0), None, Flags(2, start=True), timeout_s=0.1))
        await asyncio.sleep(0.01)
        rest = asyncio.ensure_future(batcher.infer_async(_x(2.0), None, Flags(2, end=True)))  # no timeout of its own
        for waited in (first, rest):
            with pytest.raises(DeadlineExceeded, match="timeout of the corresponding sequence has been expired"):
                await waited
        assert time.monotonic() - started < 2.0 and batcher.depth == 0
        with pytest.raises(InvalidRequest, match="must specify the START flag"):
            await batcher.infer_async(_x(2.0), None, Flags(2))

    try:
        asyncio.run(waiting())
        started = time.monotonic()
        batcher.close()  # sequence 1 holds the slot with nothing queued: it ends at once, nothing waits 5 s
        assert time.monotonic() - started < 2.0
    finally:
        batcher.close()
    # one slot (one candidate sequence), two rows a call: a lone ready request waits 0.3 s for another
    policy = _policy(strategy="oldest", max_batch_size=2, max_candidate_sequences=1, max_queue_delay_ms=300.0)
    batcher = _batcher(acc_entry, dataclasses.replace(policy, idle_s=30.0))

    async def holding() -> list[float]:
        first = asyncio.ensure_future(batcher.infer_async(_x(1.0), None, Flags(1, start=True)))
        await asyncio.sleep(0.01)
        end = await batcher.infer_async(_x(100.0), None, Flags(1, end=True), timeout_s=0.1)  # waits 0.3 s: runs
        return [float((await first)["OUTPUT"][0, 0]), float(end["OUTPUT"][0, 0])]

    try:
        assert asyncio.run(holding()) == [1.0, 101.0]
        assert batcher.depth == 0 and batcher.active == 0
    finally:
        batcher.close()


def test_a_close_ends_idle_sequences_so_those_waiting_for_a_slot_run(acc_entry: LoadedEntry) -> None:
    batcher = _batcher(acc_entry, _policy(max_batch_size=1, idle_s=30.0))

    async def main() -> float:
        await batcher.infer_async(_x(1.0), None, Flags(1, start=True))  # holds the one slot, idle
        waiting = asyncio.ensure_future(batcher.infer_async(_x(3.0), None, Flags(2, start=True)))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        # no request will come to sequence 1: the model closes (an unload)
        stopping = asyncio.get_running_loop().run_in_executor(None, batcher.close)
        out = await asyncio.wait_for(waiting, 5)
        await asyncio.wait_for(stopping, 5)
        return float(out["OUTPUT"][0, 0])

    try:
        assert asyncio.run(main()) == 3.0
    finally:
        batcher.close()


def test_a_drain_refuses_new_sequences_and_runs_those_held_until_they_end(acc_entry: LoadedEntry) -> None:
    """As Triton's sequence batcher once its server stops: a START is refused (UNAVAILABLE, in its words), the
    sequences held take their requests, one waiting for a slot gets it when another ends, and none is live once
    each ended (its END, or idle)."""
    batcher = _batcher(acc_entry, _policy(max_batch_size=1, idle_s=30.0))

    async def main() -> None:
        await batcher.infer_async(_x(1.0), None, Flags(1, start=True))  # holds the one slot
        waiting = asyncio.ensure_future(batcher.infer_async(_x(3.0), None, Flags(2, start=True)))
        await asyncio.sleep(0.05)
        batcher.drain()
        assert batcher.live()
        with pytest.raises(ShuttingDown, match="Server is stopping, scheduler for model 'acc' has stopped"):
            await batcher.infer_async(_x(9.0), None, Flags(5, start=True))
        assert float((await batcher.infer_async(_x(2.0), None, Flags(1)))["OUTPUT"][0, 0]) == 3.0
        await asyncio.sleep(0.05)
        assert not waiting.done()  # sequence 1 holds the slot on: it did not end at the drain
        assert float((await batcher.infer_async(_x(4.0), None, Flags(1, end=True)))["OUTPUT"][0, 0]) == 7.0
        assert float((await asyncio.wait_for(waiting, 5))["OUTPUT"][0, 0]) == 3.0
        assert batcher.live()  # sequence 2 holds the slot now
        with pytest.raises(InvalidRequest, match="START flag"):  # sequence 1 ended: refused as at any time
            await batcher.infer_async(_x(1.0), None, Flags(1))
        await batcher.infer_async(_x(1.0), None, Flags(2, end=True))
        assert not batcher.live()

    try:
        asyncio.run(main())
    finally:
        batcher.close()
    cut = _batcher(acc_entry, _policy(max_batch_size=1, idle_s=30.0))

    async def timed_out() -> None:  # the drain's timeout passes with sequence 1 held, sequence 2 waiting for its slot
        await cut.infer_async(_x(1.0), None, Flags(1, start=True))
        waiting = asyncio.ensure_future(cut.infer_async(_x(3.0), None, Flags(2, start=True)))
        await asyncio.sleep(0.05)
        cut.drain()
        assert cut.cut() == 2 and not cut.live()
        with pytest.raises(Unavailable, match="drain ended before this request's sequence"):
            await asyncio.wait_for(waiting, 5)  # answered, not left for the transports to cut off
        with pytest.raises(ShuttingDown, match="drain ended before sequence 1"):
            await cut.infer_async(_x(2.0), None, Flags(1))

    try:
        asyncio.run(timed_out())
    finally:
        cut.close()
    idling = _batcher(acc_entry, _policy(max_batch_size=1, idle_s=0.2))
    try:
        asyncio.run(idling.infer_async(_x(1.0), None, Flags(1, start=True)))
        idling.drain()
        assert idling.live()
        time.sleep(0.3)
        assert not idling.live()  # idle past max_sequence_idle_microseconds: ended
    finally:
        idling.close()


def test_flags_of_reads_tritonclients_parameters() -> None:
    assert flags_of({}) is None and flags_of({"sequence_id": 0, "sequence_start": False}) is None
    assert flags_of({"sequence_id": "", "sequence_start": False, "sequence_end": False}) is None
    assert flags_of({"sequence_id": 5, "sequence_start": True, "sequence_end": False}) == Flags(5, True, False)
    assert flags_of({"sequence_id": "s-1", "sequence_end": True}) == Flags("s-1", False, True)
    for bad, match in (({"sequence_id": 1.5}, "whole number or a string"), ({"sequence_id": -1}, "unsigned 64-bit"),
                       ({"sequence_id": 1, "sequence_end": 1}, "true or false"),
                       ({"sequence_id": True}, "whole number or a string"),
                       ({"sequence_id": float(1 << 64)}, "18446744073709551616 is not an unsigned 64-bit")):  # fmt: skip
        with pytest.raises(InvalidRequest, match=match):
            flags_of(bad)
    deep: list = []
    for _ in range(5000):  # nested past Python's recursion (the JSON readers take 1,000 levels): repr raised
        deep = [deep]
    for key in ("sequence_id", "sequence_start"):
        with pytest.raises(InvalidRequest, match="nested too deep to show"):
            flags_of({"sequence_id": 1, key: deep})


# -- configs refused ------------------------------------------------------------------------------------
@pytest.fixture
def acc(tmp_path: Path) -> tuple[ModelRecord, LoadSpec]:
    store, record = _register(tmp_path)
    return record, default_spec(store, record)


def _read(acc: tuple[ModelRecord, LoadSpec], text: str, model_dir: Path | None = None) -> model_config.LoadConfig:
    return model_config.read(config_text.as_json(text), *acc, None, model_dir)


def test_a_sequence_model_without_instance_group_has_tritons_two_instances_on_cpu(
    acc: tuple[ModelRecord, LoadSpec],
) -> None:
    """Triton gives its ONNX Runtime backend's models 2 CPU instances where a config gives none
    (SetDefaultInstanceCount), and the direct strategy a slot per batch row per instance: 8 sequences at once
    here. polystack gave 1 instance, 4 slots: a fifth sequence waited for one to end."""
    policy = _read(acc, ACC % {"idle": 1000}).sequence
    assert policy is not None and (policy.instances, policy.slots) == (2, 8)
    one = _read(acc, ACC % {"idle": 1000} + "instance_group [ { count: 1 } ]\n").sequence
    assert one is not None and (one.instances, one.slots) == (1, 4)
    unset = _read(acc, ACC % {"idle": 1000} + "instance_group [ { kind: KIND_CPU } ]\n").sequence  # count 0: unset
    assert unset is not None and unset.instances == 2


_CONTROLS = ACC.split("sequence_batching {")[1].split("state [")[0].split("\n", 2)[2]


@pytest.mark.parametrize(
    ("sequence", "match"),
    [
        ("direct {} oldest {}", "sets both direct and oldest|oneof"),
        (
            'control_input [ { name: "START", control [ { kind: CONTROL_SEQUENCE_START } ] } ]',
            "must specify either 'int32_false_true', 'fp32_false_true' or 'bool_false_true' for CONTROL_SEQUENCE_START "
            "for acc$",  # Triton's whole sentence: the model's name unquoted (helper-195)
        ),
        (
            'control_input [ { name: "START", control [ { kind: CONTROL_SEQUENCE_START, int32_false_true: [ 1 ] } ] } ]',
            "'int32_false_true' must have exactly 2 entries",
        ),
        (
            'control_input [ { name: "START", control [ { int32_false_true: [0, 1], fp32_false_true: [0, 1] } ] } ]',
            "specifies more than one from",
        ),
        (
            'control_input [ { name: "START", control [ { int32_false_true: [0, 1] } ] },'
            ' { name: "END", control [ { int32_false_true: [0, 1] } ] } ]',
            "specifies multiple CONTROL_SEQUENCE_START tensors for acc$",
        ),
        (
            'control_input [ { name: "CORRID", control [ { kind: CONTROL_SEQUENCE_CORRID } ] } ]',
            "unexpected data type for control CONTROL_SEQUENCE_CORRID",
        ),
        ("control_input [ { control [ { int32_false_true: [0, 1] } ] } ]", "control tensor must have a name"),
        (
            'control_input [ { name: "START", control [ { int32_false_true: [0, 1] } ] },'
            ' { name: "START", control [ { kind: CONTROL_SEQUENCE_END, int32_false_true: [0, 1] } ] } ]',
            "sequence batching control tensor 'START' is specified for multiple control kinds for acc$",
        ),
        (
            'control_input [ { name: "START", control [ { fp32_false_true: [0, 1] } ] } ]',
            "model tensor 'START' is INT32, but the config gives FP32",
        ),
        ('control_input [ { name: "NOPE", control [ { int32_false_true: [0, 1] } ] } ]', "not an input of 'acc'"),
        (
            'state [ { input_name: "STATE_IN", output_name: "STATE_OUT", data_type: TYPE_FP32, dims: [ 2 ] } ]',
            "does not take \\[2\\]",
        ),
        (
            'state [ { input_name: "STATE_IN", output_name: "OUTPUT", data_type: TYPE_FP32, dims: [ 0 ] } ]',
            "each is 1 or more, or -1",
        ),
        (
            'state [ { input_name: "STATE_IN", data_type: TYPE_FP32, dims: [ 1 ] } ]',
            "must set input_name and output_name",
        ),
        (
            'state [ { input_name: "STATE_IN", output_name: "STATE_OUT", data_type: TYPE_FP32, dims: [ 1 ],'
            " initial_state [ { data_type: TYPE_FP32, dims: [ 1 ], zero_data: true } ] } ]",
            "Field 'name' must be set",
        ),
        (
            'state [ { input_name: "STATE_IN", output_name: "STATE_OUT", data_type: TYPE_FP32, dims: [ 1 ],'
            ' initial_state [ { data_type: TYPE_INT32, dims: [ 1 ], zero_data: true, name: "z" } ] } ]',
            "does not match the state data type",
        ),
        ("iterative_sequence: true", "is not a Python model, whose execute alone asks to run a request again"),
        ("direct { minimum_slot_utilization: 1.5 }", "minimum slot utilization must be in range"),
        ("oldest { preferred_batch_size: [ 8 ] }", "preferred batch size must be <= max batch size"),
    ],
)
def test_sequence_configs_refused_say_what_is_wrong(
    acc: tuple[ModelRecord, LoadSpec], sequence: str, match: str
) -> None:
    with pytest.raises(InvalidRequest, match=match):
        _read(acc, f"max_batch_size: 4\nsequence_batching {{ {sequence} }}\n")


def test_sequence_batching_refused_beside_dynamic_batching_or_a_cache(
    acc: tuple[ModelRecord, LoadSpec],
) -> None:
    body = ACC % {"idle": 1000}
    with pytest.raises(InvalidRequest, match="both dynamic_batching and sequence_batching"):
        model_config.read(
            json.dumps({**json.loads(config_text.as_json(body)), "dynamic_batching": {}}),
            *acc, None,
        )  # fmt: skip
    with pytest.raises(InvalidRequest, match="Response Cache does not currently support model 'acc'"):
        _read(acc, body + "response_cache { enable: true }\n")


def test_a_sequence_config_reads_back_from_get_config(acc: tuple[ModelRecord, LoadSpec], tmp_path: Path) -> None:
    (tmp_path / "initial_state").mkdir()
    (tmp_path / "initial_state" / "start.bin").write_bytes(np.array([100.0], np.float32).tobytes())
    text = (ACC % {"idle": 5000}).replace(
        "dims: [ 1 ] } ]\n}",
        'dims: [ 1 ], initial_state [ { data_type: TYPE_FP32, dims: [ 1 ], name: "s", data_file: "start.bin" } ] } ]'
        "\n  oldest { max_candidate_sequences: 3, preferred_batch_size: [ 2 ], max_queue_delay_microseconds: 100 }\n}",
    )
    first = _read(acc, text, tmp_path)
    # max_candidate_sequences per instance, of Triton's two CPU instances
    assert first.sequence is not None and first.sequence.strategy == "oldest" and first.sequence.slots == 6
    assert first.sequence.states[0].first(True).tolist() == [[100.0]]
    assert first.sequence.idle_s == 0.005 and first.sequence.max_queue_delay_ms == 0.1
    rendered = sequence_config.render(first.sequence)
    again = model_config.read(json.dumps({"max_batch_size": 4, "sequence_batching": rendered}), *acc, None, tmp_path)
    assert again.sequence == first.sequence


def test_a_state_output_the_config_lists_is_shown_to_clients(acc: tuple[ModelRecord, LoadSpec], tmp_path: Path) -> None:
    """As Triton's: a client may read the output state when the config lists it under output."""
    listed = _read(acc, ACC % {"idle": 1000} + 'output [ { name: "STATE_OUT", data_type: TYPE_FP32, dims: [ 1 ] } ]\n')
    hidden = _read(acc, ACC % {"idle": 1000})
    assert listed.sequence is not None and hidden.sequence is not None
    signature = acc[0].signature
    assert "STATE_OUT" in listed.sequence.shown(signature).output_names
    assert "STATE_OUT" not in hidden.sequence.shown(signature).output_names
    store = Store.at(tmp_path / "home")
    entry = Engine(store).build(acc[0].ref)
    batcher = _batcher(entry, listed.sequence)

    async def main() -> dict[str, np.ndarray]:
        return await batcher.infer_async(_x(2.0), ["OUTPUT", "STATE_OUT"], Flags(1, start=True, end=True))

    try:
        out = asyncio.run(main())
        assert out["OUTPUT"].tolist() == out["STATE_OUT"].tolist() == [[2.0]]
    finally:
        batcher.close()
        entry.model.close()


def test_a_grpc_sequence_id_sent_as_a_negative_int64_is_the_uint64_with_those_bits(tmp_path: Path) -> None:
    """Triton's C++ and Java clients send every uint64 sequence ID as int64_param, so IDs of 2^63 and above come
    negative; Triton reads the bits as the unsigned ID (helper-72: polystack refused them)."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    def request(value: float, **sid: Any) -> Any:
        req = service_pb2.ModelInferRequest(model_name="acc")
        tensor = req.inputs.add(name="INPUT", datatype="FP32", shape=[1, 1])
        tensor.contents.fp32_contents.append(value)
        for key, v in sid.items():
            setattr(req.parameters["sequence_id"], key, v)
        return req

    with _served(tmp_path) as (_, _, grpc_port), grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        first = request(1.0, int64_param=-5)
        first.parameters["sequence_start"].bool_param = True
        stub.ModelInfer(first, timeout=10)
        # the same sequence (a uint64_param is refused, as tritonserver 2.51 refuses it: helper-113, and the test
        # of refusals above)
        answer = stub.ModelInfer(request(2.0, int64_param=-5), timeout=10)
        total = np.frombuffer(answer.raw_output_contents[[o.name for o in answer.outputs].index("OUTPUT")], np.float32)
        assert total.tolist() == [3.0]


def test_get_config_shows_sequence_batching_as_tritonserver_prints_it(tmp_path: Path) -> None:
    """helper-113 against tritonserver 2.51: every control and state field at its default, iterative_sequence, no
    strategy where the config names none, and oldest's preferred batch size filled in with max_batch_size."""
    store, record = _register(tmp_path)
    seq = (
        'control_input [ { name: "START", control [ { kind: CONTROL_SEQUENCE_START, int32_false_true: [ 0, 1 ] } ] }, '
        '{ name: "END", control [ { kind: CONTROL_SEQUENCE_END, int32_false_true: [ 0, 1 ] } ] }, '
        '{ name: "READY", control [ { kind: CONTROL_SEQUENCE_READY, int32_false_true: [ 0, 1 ] } ] } ]\n'
        'state [ { input_name: "STATE_IN", output_name: "STATE_OUT", data_type: TYPE_FP32, dims: [ 1 ] } ]'
    )

    def shown(strategy: str) -> dict[str, Any]:
        text = f"max_batch_size: 4\nsequence_batching {{ {strategy}\n{seq} }}\n"
        policy = model_config.read(config_text.as_json(text), record, default_spec(store, record), None).sequence
        assert policy is not None
        return sequence_config.render(policy)

    plain = shown("")
    assert "direct" not in plain and "oldest" not in plain and plain["iterative_sequence"] is False
    assert plain["control_input"][0]["control"] == [
        {"kind": "CONTROL_SEQUENCE_START", "int32_false_true": [0, 1], "fp32_false_true": [], "bool_false_true": [],
         "data_type": "TYPE_INVALID"}
    ]  # fmt: skip
    assert plain["state"] == [
        {"input_name": "STATE_IN", "output_name": "STATE_OUT", "data_type": "TYPE_FP32", "dims": [1],
         "initial_state": [], "use_same_buffer_for_input_output": False, "use_growable_memory": False}
    ]  # fmt: skip
    assert shown("direct { }")["direct"] == {"max_queue_delay_microseconds": 0, "minimum_slot_utilization": 0.0}
    assert shown("oldest { max_candidate_sequences: 4 }")["oldest"] == {
        "max_queue_delay_microseconds": 0, "max_candidate_sequences": 4, "preferred_batch_size": [4],
        "preserve_ordering": False,
    }  # fmt: skip
    # what GET config shows loads back as the same policy
    for strategy in ("", "direct { }", "oldest { max_candidate_sequences: 4 }"):
        text = f"max_batch_size: 4\nsequence_batching {{ {strategy}\n{seq} }}\n"
        policy = model_config.read(config_text.as_json(text), record, default_spec(store, record), None).sequence
        back = json.dumps({"max_batch_size": 4, "sequence_batching": shown(strategy)})
        again = model_config.read(back, record, default_spec(store, record), None).sequence
        assert again == policy, strategy


def _concatenating(path: Path, batched: bool) -> None:
    """OUTPUT = STATE_IN + INPUT (strings joined), kept as the state: the sequence's inputs so far, as one string."""
    import onnx
    from onnx import TensorProto, helper

    dims: list[Any] = ["n", 1] if batched else [1]
    graph = helper.make_graph(
        [helper.make_node("StringConcat", ["STATE_IN", "INPUT"], ["OUTPUT"]),
         helper.make_node("Identity", ["OUTPUT"], ["STATE_OUT"])],
        "concat",
        [helper.make_tensor_value_info(n, TensorProto.STRING, dims) for n in ("INPUT", "STATE_IN")],
        [helper.make_tensor_value_info(n, TensorProto.STRING, dims) for n in ("OUTPUT", "STATE_OUT")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    path.parent.mkdir(parents=True)
    onnx.save_model(model, str(path))


def test_a_text_state_is_kept_as_triton_keeps_one(tmp_path: Path) -> None:
    """A TYPE_STRING implicit state (Triton's own QA models have one; helper-158: the server refused to start), from
    empty strings, or from an initial_state data file in Triton's BYTES wire form, batched or not."""
    repo = tmp_path / "models"
    state = ('state [ { input_name: "STATE_IN", output_name: "STATE_OUT", data_type: TYPE_STRING, dims: [ 1 ]%s } ]')
    initial = ', initial_state [ { data_type: TYPE_STRING, dims: [ 1 ], name: "s", data_file: "s.bin" } ]'
    for name, batched, first in (("joined", True, ""), ("seeded", False, initial)):
        _concatenating(repo / name / "1" / "model.onnx", batched)
        (repo / name / "config.pbtxt").write_text(
            f'platform: "onnxruntime_onnx"\nmax_batch_size: {4 if batched else 0}\n'
            'input [ { name: "INPUT", data_type: TYPE_STRING, dims: [ 1 ] } ]\n'
            'output [ { name: "OUTPUT", data_type: TYPE_STRING, dims: [ 1 ] } ]\n'
            f"sequence_batching {{ {state % first} }}\n"
        )
    (repo / "seeded" / "initial_state").mkdir()
    (repo / "seeded" / "initial_state" / "s.bin").write_bytes(len(b">").to_bytes(4, "little") + b">")
    port = free_port()
    with cli_server(tmp_path / "home", ["--model-repository", str(repo), "--grpc-port", "-1"], port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")

        def send(model: str, sequence: int, text: bytes, start: bool = False, end: bool = False) -> bytes:
            shape = [1, 1] if model == "joined" else [1]
            x = httpclient.InferInput("INPUT", shape, "BYTES")
            x.set_data_from_numpy(np.array([text], dtype=object).reshape(shape))
            answer = client.infer(model, [x], sequence_id=sequence, sequence_start=start, sequence_end=end)
            return bytes(answer.as_numpy("OUTPUT").reshape(-1)[0])

        assert send("joined", 1, b"a", start=True) == b"a"
        assert send("joined", 2, b"x", start=True) == b"x"  # each sequence its own state
        assert send("joined", 1, b"b") == b"ab"
        assert send("joined", 2, b"y", end=True) == b"xy"
        assert send("joined", 1, b"c", end=True) == b"abc"
        assert send("seeded", 3, b"a", start=True) == b">a"
        assert send("seeded", 3, b"b", end=True) == b">ab"
    (repo / "seeded" / "initial_state" / "s.bin").write_bytes((9).to_bytes(4, "little") + b"short")
    shutil.rmtree(repo / "joined")
    line = refused_at_start(tmp_path, ["--model-repository", str(repo)])
    assert "state 'STATE_IN' is TYPE_STRING:" in line and "4-byte little-endian length and its bytes" in line, line


def _growing(path: Path, batched: bool) -> None:
    """STATE_OUT = STATE_IN with INPUT appended (the state grows by one value a request); OUTPUT = its sum."""
    import onnx
    from onnx import TensorProto, helper

    axis = 1 if batched else 0
    lead: list[Any] = ["n"] if batched else []
    graph = helper.make_graph(
        [helper.make_node("Concat", ["STATE_IN", "INPUT"], ["STATE_OUT"], axis=axis),
         helper.make_node("ReduceSum", ["STATE_OUT", "axes"], ["OUTPUT"], keepdims=1)],
        "grow",
        [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, [*lead, 1]),
         helper.make_tensor_value_info("STATE_IN", TensorProto.FLOAT, [*lead, "k"])],
        [helper.make_tensor_value_info("OUTPUT", TensorProto.FLOAT, [*lead, 1]),
         helper.make_tensor_value_info("STATE_OUT", TensorProto.FLOAT, [*lead, "k1"])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [axis])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path.parent.mkdir(parents=True)
    onnx.save_model(model, str(path))


def test_a_state_of_variable_dims_grows_as_the_models_state_output_does(tmp_path: Path) -> None:
    """Triton's variable implicit state (dims [-1]; helper-158: the 17 tests of its modelsv repository could not
    start): it starts with 1 for each -1 (or its initial_state's dims), then takes the size of the model's state
    output; sequences whose states differ in size run in calls of their own."""
    repo = tmp_path / "models"
    state = 'state [ { input_name: "STATE_IN", output_name: "STATE_OUT", data_type: TYPE_FP32, dims: [ -1 ]%s } ]'
    initial = ', initial_state [ { data_type: TYPE_FP32, dims: [ 2 ], name: "s", data_file: "s.bin" } ]'
    for name, batched, first in (("grows", True, ""), ("seeded", False, initial)):
        _growing(repo / name / "1" / "model.onnx", batched)
        (repo / name / "config.pbtxt").write_text(
            f'platform: "onnxruntime_onnx"\nmax_batch_size: {4 if batched else 0}\n'
            'input [ { name: "INPUT", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
            'output [ { name: "OUTPUT", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
            f"sequence_batching {{ max_sequence_idle_microseconds: 5000000 {state % first} }}\n"
        )
    (repo / "seeded" / "initial_state").mkdir()
    (repo / "seeded" / "initial_state" / "s.bin").write_bytes(np.array([5, 5], np.float32).tobytes())
    port = free_port()
    with cli_server(tmp_path / "home", ["--model-repository", str(repo), "--grpc-port", "-1"], port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", concurrency=4)
        assert client.get_model_config("seeded")["sequence_batching"]["state"][0]["initial_state"][0]["dims"] == [2]

        def send(model: str, sequence: int, value: float, start: bool = False, end: bool = False) -> Any:
            shape = [1, 1] if model == "grows" else [1]
            x = httpclient.InferInput("INPUT", shape, "FP32")
            x.set_data_from_numpy(np.full(shape, value, np.float32))
            return client.async_infer(model, [x], sequence_id=sequence, sequence_start=start, sequence_end=end)

        def sums(*calls: Any) -> list[float]:
            return [float(c.get_result().as_numpy("OUTPUT").reshape(-1)[0]) for c in calls]

        assert sums(send("grows", 1, 1, start=True), send("grows", 1, 2)) == [1, 3]
        # sequence 1's state holds 3 values, sequence 2's 1: sent together, both answer right
        assert sums(send("grows", 2, 10, start=True), send("grows", 1, 3), send("grows", 2, 20, end=True),
                    send("grows", 1, 4, end=True)) == [10, 6, 30, 10]  # fmt: skip
        assert sums(send("seeded", 3, 1, start=True), send("seeded", 3, 2, end=True)) == [11, 13]


def test_a_sequence_model_without_batching_takes_inputs_whose_first_dims_differ_as_triton_does(tmp_path: Path) -> None:
    """With max_batch_size 0 a sequence model's inputs have no batch dimension: A [1] and B [2] reach it as they are,
    as tritonserver 2.51 passes them (helper-164); polystack refused them as a batch-size mismatch."""
    repo = tmp_path / "models"
    concat_onnx(repo / "seq" / "1" / "model.onnx")
    (repo / "seq" / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nsequence_batching { max_sequence_idle_microseconds: 5000000 }\n' + CONCAT_IO
    )
    port = free_port()
    with cli_server(tmp_path / "home", ["--model-repository", str(repo), "--grpc-port", "-1"], port, tmp_path / "log"):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        answer = http.infer("seq", concat_inputs(), sequence_id=7, sequence_start=True, sequence_end=True)
        np.testing.assert_array_equal(answer.as_numpy("C"), [1, 2, 3])


def test_an_id_of_the_wrong_kind_for_the_corrid_control_is_refused_in_tritons_words(acc_entry: LoadedEntry) -> None:
    """Triton's L0_sequence_corrid_batcher test_corrid_data_type (helper-166): its words, then polystack's."""
    numeric = _batcher(acc_entry, _policy())
    controls = (Control("start", "START", DType.INT32), Control("corrid", "CORRID", DType.BYTES))
    strings = _batcher(acc_entry, SequencePolicy(controls=controls, max_batch_size=4))

    async def main() -> None:
        with pytest.raises(InvalidRequest, match=r"^sequence batching control 'CORRID' data-type is 'BYTES', but model '\w+' expects 'UINT64'"):
            await numeric.infer_async(_x(1.0), None, Flags("a", start=True))
        with pytest.raises(InvalidRequest, match=r"^sequence batching control 'CORRID' data-type is 'UINT64', but model '\w+' expects 'BYTES'"):
            await strings.infer_async(_x(1.0), None, Flags(7, start=True))

    try:
        asyncio.run(main())
    finally:
        for batcher in (numeric, strings):
            batcher.close()
