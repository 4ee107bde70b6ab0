"""Regenerate the committed gRPC stubs in ``grpc_gen/`` from ``grpc_gen/inference.proto``.

Run ``python -m polystack.protocol.generate_grpc`` (needs grpcio-tools, a dev dependency).

The generated modules are rewritten to register their descriptors in a private descriptor pool
(``grpc_gen/_pool.py``) instead of protobuf's default one: tritonclient registers its own
``inference.*`` messages in the default pool, and a second, different definition of the same names
there is refused. A process that runs the server and tritonclient side by side (the tests, the
demo) needs both. Message package names never reach the wire, so this changes nothing for clients.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
GEN = HERE / "grpc_gen"
SRC = HERE.parents[1]  # .../src


def main() -> int:
    from grpc_tools import protoc

    args = [
        "grpc_tools.protoc",
        f"-I{SRC}",
        f"--python_out={SRC}",
        f"--pyi_out={SRC}",
        f"--grpc_python_out={SRC}",
        str(GEN / "inference.proto"),
    ]
    if protoc.main(args) != 0:
        print("protoc failed", file=sys.stderr)
        return 1
    pb2 = GEN / "inference_pb2.py"
    text = pb2.read_text()
    text = text.replace(
        "from google.protobuf import descriptor_pool as _descriptor_pool\n",
        "from polystack.protocol.grpc_gen._pool import POOL as _POOL\n",
    )
    text = text.replace("_descriptor_pool.Default().AddSerializedFile", "_POOL.AddSerializedFile")
    pb2.write_text(text)
    grpc_mod = GEN / "inference_pb2_grpc.py"
    text = grpc_mod.read_text()
    # The generated version guard refuses any grpcio older than the generator; the stubs use
    # only long-stable grpc APIs, so drop the guard rather than pin grpcio to the newest release.
    text = re.sub(r"\nGRPC_GENERATED_VERSION = .*?\n(?=\n\nclass )", "\n", text, flags=re.S)
    grpc_mod.write_text(text)
    print(f"wrote {pb2.name}, {pb2.with_suffix('.pyi').name}, {grpc_mod.name} in {GEN}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
