"""A register process killed with SIGKILL mid-write leaves the store consistent (real subprocesses)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from polystack.formats import import_model
from polystack.store import Store

# Registers one large model (tens of MB, so the blob write takes a while) again and again under
# fresh names; the parent kills it at varying moments.
WRITER = """
import sys
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from pathlib import Path
from polystack.config import StoreSettings
from polystack.formats import import_model
from polystack.store import Store

home, work = Path(sys.argv[1]), Path(sys.argv[2])
store = Store(StoreSettings(home=home))
i = int(sys.argv[3])  # a fresh offset per run: new bytes, new blobs
while True:
    w = np.full((2048, 2048), float(i), dtype=np.float32)  # 16 MiB, different bytes each round
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2048])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2048])],
        [numpy_helper.from_array(w, "w")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    p = work / "big.onnx"
    onnx.save_model(m, str(p))
    imp = import_model(p, work)
    store.register(imp.artifact, name=f"big-{i}", format=imp.format, signature=imp.signature)
    print(i, flush=True)
    i += 1
"""


def test_sigkill_mid_register_leaves_no_row_without_blob_and_no_partial_blob(tmp_path: Path) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    for run, delay in enumerate((0.9, 1.3, 1.7, 2.2)):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(home), str(work), str(run * 1000)], stdout=subprocess.PIPE
        )
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

        store = Store.at(home)
        assert store.catalog.integrity_check() == "ok"
        for record in store.models.list():
            blob = store.blobs.path(record.digest)
            assert blob.is_file(), f"row {record.name} has no blob"
            assert blob.stat().st_size == record.size_bytes
            assert store.blobs.verify(record.digest), f"blob of {record.name} is corrupt"
        # every file that looks like a blob is complete: its name is its content's digest
        for digest in store.blobs.digests():
            assert store.blobs.verify(digest)
        store.close()
    # and the store still takes new registrations after all that
    store = Store.at(home)
    assert store.gc(older_than_s=0) >= 0
    store.close()


# Removes a model whose blob nothing else names, and dies (SIGKILL) the moment that blob's file is gone.
REMOVER = """
import os
import signal
import sys
from pathlib import Path
from polystack.store import Store
from polystack.store.blobs import BlobStore

unlink = BlobStore.remove

def remove_then_die(self, digest):
    unlink(self, digest)
    os.kill(os.getpid(), signal.SIGKILL)

BlobStore.remove = remove_then_die
Store.at(Path(sys.argv[1])).remove(sys.argv[2])
"""


def test_a_removal_killed_as_it_deletes_a_blob_leaves_no_row_naming_it(tmp_path: Path, mlp_path: Path) -> None:
    home = tmp_path / "home"
    store = Store.at(home)
    imported = import_model(mlp_path, mlp_path.parent)
    record, _ = store.register(imported.artifact, name="mlp", format=imported.format, signature=imported.signature)
    store.close()

    proc = subprocess.run([sys.executable, "-c", REMOVER, str(home), "mlp"], timeout=60)
    assert proc.returncode == -signal.SIGKILL

    store = Store.at(home)
    assert not store.blobs.has(record.digest)
    assert store.models.list() == [], "the removal's row outlived the blob it names"
    store.close()
