"""`polystack serve --model-repository s3://... | gs://... | as://...`: a Triton model repository in cloud storage,
served from a local copy that loads by name and polls bring up to date, by a real server process; the buckets are real
S3, GCS and Azure Storage APIs on 127.0.0.1 (moto's S3 server, gcp-storage-emulator and Microsoft's Azurite), from
.venv-cloud, which `make setup` builds."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from servekit import cli_server, free_port, refused_at_start, until
from tritonclient.utils import InferenceServerException

from polystack.errors import InvalidRequest
from polystack.examples import mlp_onnx
from polystack.server import cloud_repository

ROOT = Path(__file__).resolve().parents[2]
CLOUD = ROOT / ".venv-cloud" / "bin"
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
# Azurite's account and its key, the same in every install (Microsoft's documented development account)
AZURE_ACCOUNT = "devstoreaccount1"
AZURE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def _listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise AssertionError(f"the test server did not listen:\n{log.read_text()}")


@contextlib.contextmanager
def _test_server(cmd: list[str], port: int, log: Path) -> Iterator[None]:
    if not CLOUD.exists():
        pytest.fail(f"{CLOUD.parent} is missing: `make setup` builds it (the S3 and GCS test servers)")
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        _listening(port, proc, log)
        yield
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1: its endpoint."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with _test_server([str(CLOUD / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], port, log):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A GCS emulator (its JSON API) on 127.0.0.1, with a bucket "models": its address."""
    port = free_port()
    log = tmp_path_factory.mktemp("gcs") / "gcs.log"
    cmd = [str(CLOUD / "gcp-storage-emulator"), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory",
           "--default-bucket", "models"]  # fmt: skip
    with _test_server(cmd, port, log):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Azurite's blob service on 127.0.0.1, in memory: its account's endpoint."""
    port = free_port()
    folder = tmp_path_factory.mktemp("azurite")
    azurite = CLOUD.parent / "azurite" / "node_modules" / ".bin" / "azurite-blob"
    if not azurite.exists():
        pytest.fail(f"{azurite} is missing: `make setup` installs it (npm ci, from tests/server/azurite)")
    cmd = [str(azurite), "--inMemoryPersistence", "--blobHost", "127.0.0.1", "--blobPort", str(port),
           "--skipApiVersionCheck"]  # fmt: skip
    with _test_server(cmd, port, folder / "azurite.log"):
        yield f"http://127.0.0.1:{port}/{AZURE_ACCOUNT}"


def s3_objects(endpoint: str, bucket: str, *args: str) -> None:
    """AWS's SDK writes (or deletes) the objects (tests/server/cloud_objects.py, in .venv-cloud)."""
    _objects("s3", endpoint, bucket, *args)


def azure_objects(endpoint: str, container: str, *args: str) -> None:
    """Azure's SDK writes (or deletes) the blobs."""
    connection = f"DefaultEndpointsProtocol=http;AccountName={AZURE_ACCOUNT};AccountKey={AZURE_KEY};BlobEndpoint={endpoint};"
    _objects("azure", connection, container, *args)


def _objects(store: str, address: str, bucket: str, *args: str) -> None:
    script = Path(__file__).with_name("cloud_objects.py")
    subprocess.run([str(CLOUD / "python"), str(script), store, address, bucket, *args], check=True, timeout=60,
                   env={**os.environ, **AWS})  # fmt: skip


def model_folder(root: Path, name: str, version: int, seed: int, config: str | None = None) -> Path:
    (root / name / str(version)).mkdir(parents=True, exist_ok=True)
    mlp_onnx(root / name / str(version) / "model.onnx", seed=seed)
    if config is not None:
        (root / name / "config.pbtxt").write_text(config)
    return root / name / str(version) / "model.onnx"


def infer(client: httpclient.InferenceServerClient, model: str) -> np.ndarray:
    x = httpclient.InferInput("x", [1, 16], "FP32")
    x.set_data_from_numpy(np.ones((1, 16), np.float32))
    return client.infer(model, [x]).as_numpy("y")


def expected(model: Path) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": np.ones((1, 16), np.float32)})[0]


def copied_to(log: Path) -> Path:
    """The local copy the server made, as its log says."""
    for line in log.read_text().splitlines():
        if '"model repository copied from cloud storage"' in line:
            return Path(json.loads(line)["copy"])
    raise AssertionError(log.read_text())


def test_a_repository_in_s3_is_served_and_a_load_by_name_reads_the_bucket_again(
    tmp_path: Path, s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in AWS.items():
        monkeypatch.setenv(key, value)
    local = tmp_path / "upload"
    first = model_folder(local, "mlp", 1, seed=1, config='max_batch_size: 8\n')
    s3_objects(s3, "bucket", "put", str(local), "triton/models")
    port = free_port()
    host = s3.removeprefix("http://")
    args = ["--model-repository", f"s3://{host}/bucket/triton/models", "--grpc-port", "-1", "--allow-model-control"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "log") as proc:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        np.testing.assert_allclose(infer(client, "mlp"), expected(first), rtol=1e-5)
        assert client.get_model_config("mlp")["max_batch_size"] == 8  # its config.pbtxt, from the bucket
        # a new version, and a new model, uploaded: a load by name reads the bucket again, as Triton's does
        second = model_folder(tmp_path / "v2", "mlp", 2, seed=2)
        fresh = model_folder(tmp_path / "v2", "fresh", 1, seed=3)
        s3_objects(s3, "bucket", "put", str(tmp_path / "v2"), "triton/models")
        with pytest.raises(InferenceServerException):
            infer(client, "fresh")
        client.load_model("mlp")
        client.load_model("fresh")
        np.testing.assert_allclose(infer(client, "mlp"), expected(second), rtol=1e-5)
        np.testing.assert_allclose(infer(client, "fresh"), expected(fresh), rtol=1e-5)
        assert client.get_model_metadata("mlp")["versions"] == ["2"]
        # gone from the bucket: gone from the copy, and a load of it fails as for a folder removed
        s3_objects(s3, "bucket", "delete", "triton/models/fresh")
        with pytest.raises(InferenceServerException, match="fresh"):
            client.load_model("fresh")
        copy = copied_to(tmp_path / "log")
        assert (copy / "mlp" / "2" / "model.onnx").read_bytes() == second.read_bytes()
        assert not (copy / "fresh").exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert not copy.exists()  # a temporary copy goes at the exit, as Triton's


def test_a_polled_repository_in_gcs_follows_the_bucket(tmp_path: Path, gcs: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs)  # Google's SDK talks to the emulator, anonymously
    bucket = storage.Client().bucket("models")

    def upload(root: Path) -> None:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            bucket.blob(f"repo/{path.relative_to(root).as_posix()}").upload_from_filename(str(path))

    first = model_folder(tmp_path / "a", "mlp", 1, seed=1)
    upload(tmp_path / "a")
    mount = tmp_path / "mount"
    mount.mkdir()
    monkeypatch.setenv("TRITON_GCS_MOUNT_DIRECTORY", str(mount))  # the copy there, kept
    port = free_port()
    args = ["--model-repository", "gs://models/repo", "--grpc-port", "-1", "--repository-poll-secs", "0.3"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        np.testing.assert_allclose(infer(client, "mlp"), expected(first), rtol=1e-5)
        second = model_folder(tmp_path / "b", "mlp", 2, seed=2)
        other = model_folder(tmp_path / "b", "other", 1, seed=4)
        upload(tmp_path / "b")
        assert until(lambda: client.is_model_ready("other") and client.get_model_metadata("mlp")["versions"] == ["2"])
        np.testing.assert_allclose(infer(client, "mlp"), expected(second), rtol=1e-5)
        np.testing.assert_allclose(infer(client, "other"), expected(other), rtol=1e-5)
        for blob in list(bucket.list_blobs(prefix="repo/other/")):
            blob.delete()
        assert until(lambda: not client.is_model_ready("other"))  # gone from the bucket: unloaded by the poll
    copy = copied_to(tmp_path / "log")
    assert copy.parent == mount and (copy / "mlp" / "2" / "model.onnx").is_file()


ENSEMBLE = """
platform: "ensemble"
max_batch_size: 4
input [ { name: "IN", data_type: TYPE_FP32, dims: [ 16 ] } ]
output [ { name: "OUT", data_type: TYPE_FP32, dims: [ 4 ] } ]
ensemble_scheduling { step [ { model_name: "mlp", model_version: -1, input_map { key: "x" value: "IN" },
                               output_map { key: "y" value: "OUT" } } ] }
"""


def test_a_repository_in_azure_storage_is_served_with_the_accounts_key(
    tmp_path: Path, azurite: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Triton's explicit model control, as Triton's: an ensemble whose empty version folder is a marker blob
    (``pipe/1/``, which S3's and Azure's client list without the slash), a folder blob of Hadoop's kind (``mlp``,
    empty, beside ``mlp/1/model.onnx``), and loads by name reading the container as it is now, a new model too."""
    first = model_folder(tmp_path / "a", "mlp", 1, seed=1, config="max_batch_size: 4\n")
    (tmp_path / "a" / "pipe" / "1").mkdir(parents=True)
    (tmp_path / "a" / "pipe" / "config.pbtxt").write_text(ENSEMBLE)
    azure_objects(azurite, "models", "put", str(tmp_path / "a"), "triton/repo")  # pipe/1/: a marker blob
    azure_objects(azurite, "models", "touch", "triton/repo/mlp")
    mount = tmp_path / "mount"
    mount.mkdir()
    env = {"AZURE_STORAGE_KEY": AZURE_KEY, "AZURE_STORAGE_ENDPOINT": azurite, "TRITON_AZURE_MOUNT_DIRECTORY": str(mount)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    port = free_port()
    args = ["--model-repository", f"as://{AZURE_ACCOUNT}/models/triton/repo", "--grpc-port", "-1",
            "--model-control-mode", "explicit", "--load-model", "mlp", "--load-model", "pipe"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "log") as proc:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        np.testing.assert_allclose(infer(client, "mlp"), expected(first), rtol=1e-5)
        assert client.get_model_config("mlp")["max_batch_size"] == 4
        x = httpclient.InferInput("IN", [1, 16], "FP32")
        x.set_data_from_numpy(np.ones((1, 16), np.float32))
        np.testing.assert_allclose(client.infer("pipe", [x]).as_numpy("OUT"), expected(first), rtol=1e-5)
        second = model_folder(tmp_path / "b", "mlp", 2, seed=2)
        fresh = model_folder(tmp_path / "b", "fresh", 1, seed=3)
        azure_objects(azurite, "models", "put", str(tmp_path / "b"), "triton/repo")
        client.load_model("mlp")  # a load by name reads the container again
        client.load_model("fresh")  # one the start's copy did not hold
        np.testing.assert_allclose(infer(client, "mlp"), expected(second), rtol=1e-5)
        np.testing.assert_allclose(infer(client, "fresh"), expected(fresh), rtol=1e-5)
        azure_objects(azurite, "models", "delete", "triton/repo/fresh")
        with pytest.raises(InferenceServerException, match="fresh"):
            client.load_model("fresh")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    copy = copied_to(tmp_path / "log")
    assert copy.parent == mount and (copy / "pipe" / "1").is_dir() and not (copy / "fresh").exists()


def test_a_public_azure_container_is_read_without_a_key_and_a_wrong_key_exits_2(
    tmp_path: Path, azurite: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = model_folder(tmp_path / "a", "mlp", 1, seed=5)
    azure_objects(azurite, "public", "put-public", str(tmp_path / "a"), "repo")
    monkeypatch.setenv("AZURE_STORAGE_ENDPOINT", azurite)
    monkeypatch.delenv("AZURE_STORAGE_KEY", raising=False)
    port = free_port()
    args = ["--model-repository", f"as://{AZURE_ACCOUNT}/public/repo", "--grpc-port", "-1"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "log") as proc:  # anonymously, as Triton without a key
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        np.testing.assert_allclose(infer(client, "mlp"), expected(first), rtol=1e-5)
        proc.send_signal(signal.SIGTERM)  # its temporary copy goes at the exit
        assert proc.wait(timeout=30) == 0
    assert not copied_to(tmp_path / "log").exists()
    azure_objects(azurite, "private", "put", str(tmp_path / "a"), "repo")
    line = refused_at_start(tmp_path / "b", ["--model-repository", f"as://{AZURE_ACCOUNT}/private/repo"])
    assert "cannot read" in line, line  # a private container without a key
    monkeypatch.setenv("AZURE_STORAGE_KEY", "d3Jvbmc=")  # "wrong", base64
    line = refused_at_start(tmp_path / "c", ["--model-repository", f"as://{AZURE_ACCOUNT}/private/repo"])
    assert "cannot read" in line and "AuthorizationFailure: Server failed to authenticate" in line, line
    monkeypatch.setenv("AZURE_STORAGE_KEY", AZURE_KEY)
    secret = "?sv=2024&sig=SECRET"  # a SAS token in the location: never in a message
    line = refused_at_start(tmp_path / "d", ["--model-repository", f"as://{AZURE_ACCOUNT}/no-such-container/repo{secret}"])
    assert line.endswith("ContainerNotFound: The specified container does not exist.; check its name and credentials"), line
    assert "SECRET" not in line
    azure_objects(azurite, "odd", "put", str(tmp_path / "a"), "repo")
    azure_objects(azurite, "odd", "touch", "repo/mlp//twice.txt")
    line = refused_at_start(tmp_path / "e", ["--model-repository", f"as://{AZURE_ACCOUNT}/odd/repo"])
    assert "the object 'repo/mlp//twice.txt' has a name polystack cannot read" in line and "rename or remove it" in line
    monkeypatch.setenv("AZURE_STORAGE_KEY", "not base64!!")
    line = refused_at_start(tmp_path / "f", ["--model-repository", f"as://{AZURE_ACCOUNT}/public/repo"])
    assert line.startswith("error: cannot use these Azure Storage settings:"), line
    line = refused_at_start(tmp_path / "g", ["--model-repository", "as://"])
    assert "name the account, the container" in line


def test_cloud_repositories_that_cannot_be_read_exit_2_saying_what_to_do(
    tmp_path: Path, s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in AWS.items():
        monkeypatch.setenv(key, value)
    host = s3.removeprefix("http://")
    line = refused_at_start(tmp_path / "a", ["--model-repository", f"s3://{host}/no-such-bucket/models"])
    assert f"--model-repository s3://{host}/no-such-bucket/models: cannot read" in line
    assert "check its name and credentials" in line
    line = refused_at_start(tmp_path / "b", ["--model-repository", "abfs://container@account.dfs.core.windows.net/m"])
    assert "as://account/container/path" in line and "give that folder" in line
    line = refused_at_start(tmp_path / "d", ["--model-repository", "as://account"])
    assert "name the account, the container" in line
    line = refused_at_start(tmp_path / "c", ["--model-repository", "s3://https://bucket/models"])
    assert "comes host:port" in line


@pytest.mark.parametrize(
    ("location", "parsed"),
    [
        ("s3://bucket/path/to/models", ("s3", "bucket", "path/to/models", None)),
        ("s3://bucket", ("s3", "bucket", "", None)),
        ("s3://minio.local:9000/bucket/models/", ("s3", "bucket", "models", "http://minio.local:9000")),
        ("s3://https://s3.example.com:443/bucket/m", ("s3", "bucket", "m", "https://s3.example.com:443")),
        ("gs://bucket/path", ("gs", "bucket", "path", None)),
        ("as://account/container/path/to/models", ("as", "container", "path/to/models", None, "account")),
        ("as://account.blob.core.windows.net/container/m?sv=x", ("as", "container", "m", None, "account")),
        ("as://acc.blob.core.chinacloudapi.cn/c", ("as", "c", "", "https://acc.blob.core.chinacloudapi.cn", "acc")),
    ],
)
def test_locations_read_as_triton_reads_them(location: str, parsed: tuple[str | None, ...]) -> None:
    where = cloud_repository.parse(location)
    found = (where.scheme, where.bucket, where.prefix, where.endpoint, where.account)
    assert found[: len(parsed)] == parsed


def test_a_credential_file_gives_the_longest_matching_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = {"s3": {"": {"key_id": "any"}, "s3://special": {"key_id": "special"}}, "gs": {"": "/creds.json"}}
    (tmp_path / "creds.json").write_text(json.dumps(doc))
    monkeypatch.setenv("TRITON_CLOUD_CREDENTIAL_PATH", str(tmp_path / "creds.json"))
    assert cloud_repository._credentials("s3://special/models", "s3") == {"key_id": "special"}
    assert cloud_repository._credentials("s3://other/models", "s3") == {"key_id": "any"}
    assert cloud_repository._credentials("gs://b/m", "gs") == "/creds.json"
    (tmp_path / "creds.json").write_text("{not json")
    with pytest.raises(InvalidRequest, match="TRITON_CLOUD_CREDENTIAL_PATH"):
        cloud_repository._credentials("s3://b", "s3")


class _Listed:
    """A bucket whose objects a test sets (the copy's own logic, apart from any store): key -> bytes."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.fetched: list[str] = []

    def list(self, prefix: str) -> dict[str, tuple[int, str]]:
        return {k: (len(v), str(hash(v))) for k, v in self.objects.items() if k.startswith(prefix)}

    def fetch(self, key: str, into: Path) -> None:
        self.fetched.append(key)
        into.write_bytes(self.objects[key])


def test_a_copy_fetches_only_what_changed_and_keeps_out_of_its_folder(tmp_path: Path) -> None:
    bucket = _Listed({"r/m/1/model.onnx": b"one", "r/m/config.pbtxt": b"c", "r/e/1/": b"", "r/../evil": b"x"})
    repo = cloud_repository.CloudRepository("s3://b/r", bucket=bucket, local=tmp_path / "copy")
    assert repo.sync()
    assert (tmp_path / "copy" / "m" / "1" / "model.onnx").read_bytes() == b"one"
    assert (tmp_path / "copy" / "e" / "1").is_dir()  # an empty version folder's marker: an ensemble's
    assert not (tmp_path / "evil").exists()  # a name leading out of the repository is skipped
    bucket.fetched.clear()
    assert not repo.sync()  # nothing changed: nothing fetched
    assert bucket.fetched == []
    bucket.objects["r/m/1/model.onnx"] = b"two"
    del bucket.objects["r/m/config.pbtxt"]
    assert repo.sync("m")
    assert bucket.fetched == ["r/m/1/model.onnx"]
    assert not (tmp_path / "copy" / "m" / "config.pbtxt").exists()
    del bucket.objects["r/m/1/model.onnx"]
    assert repo.sync("m") and not (tmp_path / "copy" / "m").exists()  # the model's folder is gone
    assert (tmp_path / "copy" / "e" / "1").is_dir()  # the others' untouched


def test_a_stores_error_is_one_line_saying_what_went_wrong() -> None:
    xml = "Server returned 404: <?xml?>\n<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message>"
    assert cloud_repository._brief(RuntimeError(xml)) == "NoSuchBucket: The specified bucket does not exist"
    imds = RuntimeError("Error performing PUT http://169.254.169.254/latest/api/token\n  403 Forbidden")
    assert cloud_repository._brief(imds).startswith("no AWS credentials: none in AWS_ACCESS_KEY_ID")
    assert cloud_repository._brief(imds, "as").startswith("no Azure credentials: AZURE_STORAGE_AUTH_TYPE asks")
    azure = "404: <Error>\n  <Code>ContainerNotFound</Code>\n  <Message>The specified container does not exist.\nRequestId:1\nTime:2</Message>"
    assert cloud_repository._brief(RuntimeError(azure), "as") == "ContainerNotFound: The specified container does not exist."
    assert cloud_repository._brief(RuntimeError("a\n   b")) == "a b"
    gone = ("Generic MicrosoftAzure error: Error performing list request: Error performing GET https://nosuch.blob.core."
            "windows.net/c?restype=container&comp=list in 6.1s, after 10 retries, max_retries: 10, retry_timeout: 180s  - "
            "HTTP error: error sending request\n\nDebug source:\nGeneric {")  # fmt: skip
    assert cloud_repository._brief(RuntimeError(gone), "as") == (
        "cannot reach https://nosuch.blob.core.windows.net (error sending request, 11 tries)"
    )


def test_a_gcs_credential_file_may_be_an_authorized_users(tmp_path: Path) -> None:
    user = {"type": "authorized_user", "client_id": "c.apps.googleusercontent.com", "client_secret": "s",
            "refresh_token": "r"}  # fmt: skip
    (tmp_path / "user.json").write_text(json.dumps(user))
    bucket = cloud_repository.GcsBucket("models", str(tmp_path / "user.json"))  # no request made yet
    assert type(bucket._client._credentials).__module__ == "google.oauth2.credentials"


def test_azure_credentials_are_tritons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_KEY", "AZURE_STORAGE_AUTH_TYPE", "AZURE_STORAGE_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    location = "as://host-account/container/models"

    def opened() -> dict[str, str]:  # the client's settings (no request made)
        bucket = cloud_repository.open_bucket(location, cloud_repository.parse(location))
        return dict(bucket._store.config)  # type: ignore[attr-defined]

    assert opened()["skip_signature"] == "true"  # nothing set: anonymous, as Triton
    assert opened()["account_name"] == "host-account"
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", "given")  # wins over the location's, as in Triton
    monkeypatch.setenv("AZURE_STORAGE_KEY", AZURE_KEY)
    assert opened()["account_name"] == "given" and opened()["account_key"] == AZURE_KEY
    monkeypatch.setenv("AZURE_STORAGE_AUTH_TYPE", "Key")  # none Triton knows: the key all the same, as Triton
    assert opened()["account_key"] == AZURE_KEY
    monkeypatch.delenv("AZURE_STORAGE_KEY")
    assert opened()["skip_signature"] == "true"  # and without a key, anonymous, as Triton
    monkeypatch.setenv("AZURE_STORAGE_KEY", AZURE_KEY)
    doc = {"as": {"as://host-account/container": {"account_str": "filed", "account_key": AZURE_KEY}}}
    (tmp_path / "creds.json").write_text(json.dumps(doc))
    monkeypatch.setenv("TRITON_CLOUD_CREDENTIAL_PATH", str(tmp_path / "creds.json"))  # the file wins over variables
    assert opened()["account_name"] == "filed"
    for bad, match in (({"as": ["x"]}, "'as' section is not an object"), ({"as": {"": {"account_str": 5}}}, "strings")):
        (tmp_path / "creds.json").write_text(json.dumps(bad))
        with pytest.raises(InvalidRequest, match=match):
            opened()


def test_two_servers_of_one_repository_never_copy_into_one_folder_and_killed_ones_copies_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mount directory's folder is one process's at a time (helper-143: two replicas sharing a volume wrote into
    one folder, and one exited 2); the temporary copies a killed server left go at a later start."""
    import tempfile

    from polystack import temp_folders

    bucket = _Listed({"r/m/1/model.onnx": b"one"})
    monkeypatch.setenv("TRITON_AWS_MOUNT_DIRECTORY", str(tmp_path / "mount"))
    (tmp_path / "mount").mkdir()
    first, second = (cloud_repository.CloudRepository("s3://b/r", bucket=bucket) for _ in range(2))
    try:
        assert first.local.parent == second.local.parent == tmp_path / "mount" and first.local != second.local
        first.sync()
        second.sync()
        assert (second.local / "m" / "1" / "model.onnx").read_bytes() == b"one"
    finally:
        second.close()
        first.close()
    assert first.local.is_dir() and not second.local.exists()  # the kept one stays, the second's own goes
    monkeypatch.delenv("TRITON_AWS_MOUNT_DIRECTORY")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(temp_folders, "_swept", {})
    left = tmp_path / f"{cloud_repository.COPY_PREFIX}killed"  # a killed server's: unlocked, an hour old
    (left / "m").mkdir(parents=True)
    temp_folders.lock_of(left).touch()
    os.utime(left, (time.time() - 3600, time.time() - 3600))
    repo = cloud_repository.CloudRepository("s3://b/r", bucket=bucket)
    try:
        assert not left.exists() and repo.local.is_dir()
    finally:
        repo.close()
    assert not repo.local.exists() and not temp_folders.lock_of(repo.local).exists()


def test_sigterm_while_a_repository_is_copied_stops_the_copy_whose_folder_then_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pod stopped while its models download (helper-143: SIGTERM killed the process, the partial copy stayed)."""
    from polystack.cli import serve

    class Slow(_Listed):
        def fetch(self, key: str, into: Path) -> None:
            os.kill(os.getpid(), signal.SIGTERM)  # the signal comes mid-copy
            time.sleep(5)

    made: list[cloud_repository.CloudRepository] = []
    real = cloud_repository.CloudRepository

    def repository(location: str) -> cloud_repository.CloudRepository:
        return real(location, bucket=Slow({"r/m/1/model.onnx": b"one"}))

    monkeypatch.setattr(cloud_repository, "CloudRepository", repository)
    before = signal.getsignal(signal.SIGTERM)
    started = time.monotonic()
    with pytest.raises(serve._StoppedCopying):
        serve._repository_roots(["s3://b/r"], made)  # type: ignore[arg-type]
    assert time.monotonic() - started < 4 and signal.getsignal(signal.SIGTERM) == before
    [copy] = made
    copy.close()  # as the command's finally does
    assert not copy.local.exists()
