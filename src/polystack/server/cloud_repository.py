"""Model repositories in cloud storage, as tritonserver reads them: ``--model-repository s3://bucket/path``
(an S3-compatible store: ``s3://host:port/bucket/path``, over HTTP, or ``s3://https://host:port/bucket/path``),
``gs://bucket/path`` and ``as://account/container/path`` (Azure Storage).

As Triton does, the server serves a local copy of the repository (``CloudRepository.local``): made at start, in a
temporary folder removed at the exit (or in ``TRITON_AWS_MOUNT_DIRECTORY`` / ``TRITON_GCS_MOUNT_DIRECTORY`` /
``TRITON_AZURE_MOUNT_DIRECTORY``, kept), and brought up to date from the bucket, a model's folder at a time, by a load
of the model by name (explicit model control), and whole by each poll (``--repository-poll-secs``); the repository
code (``model_repository.py``) then reads it as any folder. An object that did not change (its ETag) is not fetched
again; one gone from the bucket goes from the copy.

Credentials are Triton's: ``TRITON_CLOUD_CREDENTIAL_PATH``'s file (the longest entry matching the repository), else
for S3 ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN`` and ``AWS_DEFAULT_REGION`` (or the
``aws configure`` files, ``AWS_PROFILE``'s section; the instance's role where none), for GCS
``GOOGLE_APPLICATION_CREDENTIALS``, the attached service account, then anonymous access (a public bucket), and for
Azure ``AZURE_STORAGE_ACCOUNT``, ``AZURE_STORAGE_KEY``, ``AZURE_STORAGE_AUTH_TYPE`` (``key``, ``managed_identity``,
``default``) and ``AZURE_STORAGE_CLIENT_ID``, anonymous access where none.

The S3 and Azure client is obstore (the Rust object_store crate's, with no Python dependencies: boto3's botocore pins
a python-dateutil older than the one pandas needs here); the GCS client is Google's own (google-cloud-storage, whose
JSON API its emulators speak too).
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol

from polystack import temp_folders
from polystack.errors import InvalidRequest, Unavailable

log = logging.getLogger("polystack.server")

SCHEMES = ("s3://", "gs://", "as://")
COPY_PREFIX = "polystack-repository-"  # a copy's temporary folder
_OTHER_SCHEMES = ("az://", "abfs://", "abfss://", "wasb://", "wasbs://", "http://", "https://", "file://")
_MOUNTS = {"s3": "TRITON_AWS_MOUNT_DIRECTORY", "gs": "TRITON_GCS_MOUNT_DIRECTORY", "as": "TRITON_AZURE_MOUNT_DIRECTORY"}
_AZURE_HOST = ".blob.core.windows.net"
_MANIFEST = ".polystack-cloud-copy.json"  # in the copy: each object's ETag as fetched


def is_cloud(location: str) -> bool:
    """Whether ``--model-repository``'s ``location`` names cloud storage rather than a local folder."""
    return location.startswith(SCHEMES)


def check_location(location: str) -> None:
    """Refuse a location polystack cannot read (another scheme than Triton's), saying what to do."""
    if location.startswith(_OTHER_SCHEMES):
        raise InvalidRequest(
            f"--model-repository {location}: polystack reads model repositories from local folders, s3://, gs:// and "
            "as:// (Azure Storage, named as Triton names it: as://account/container/path); name it so, or copy it "
            "into a local folder and give that folder"
        )


class Bucket(Protocol):
    """A bucket's objects under a prefix: listed with their ETags, fetched into files."""

    def list(self, prefix: str) -> dict[str, tuple[int, str]]:
        """Each object's key (its full name) whose name starts with ``prefix``: (size, ETag)."""
        ...

    def fetch(self, key: str, into: Path) -> None:
        """The object's bytes into the file ``into``."""
        ...


class S3Bucket:
    def __init__(self, bucket: str, endpoint: str | None, credentials: dict[str, str]) -> None:
        try:
            from obstore.store import S3Store
        except ImportError:
            raise _missing("s3") from None

        options: dict[str, Any] = {}
        if endpoint is not None:  # a private or S3-compatible store: path-style requests, HTTP allowed where given
            options.update(endpoint=endpoint, virtual_hosted_style_request=False)
        options.update({k: v for k, v in credentials.items() if v})
        options.setdefault("region", "us-east-1")  # the AWS SDK's default, as Triton's
        http = endpoint is not None and endpoint.startswith("http://")
        try:
            self._store = S3Store(bucket, client_options={"allow_http": True} if http else None, **options)
        except Exception as e:  # settings the client refuses
            raise InvalidRequest(f"cannot use these S3 settings: {_brief(e, 's3')}") from None

    def list(self, prefix: str) -> dict[str, tuple[int, str]]:
        return _listed(self._store, prefix)

    def fetch(self, key: str, into: Path) -> None:
        _fetched(self._store, key, into)


class GcsBucket:
    def __init__(self, bucket: str, credentials_file: str | None) -> None:
        try:
            from google.cloud import storage
        except ImportError:
            raise _missing("gs") from None

        if credentials_file:  # an authorized user's or a service account's, as GOOGLE_APPLICATION_CREDENTIALS names
            import google.auth

            try:
                credentials, project = google.auth.load_credentials_from_file(credentials_file)
            except Exception as e:
                raise InvalidRequest(f"cannot read the Google Cloud credential file {credentials_file}: {_brief(e, 'gs')}") from None
            client = storage.Client(credentials=credentials, project=project)
        else:
            try:  # GOOGLE_APPLICATION_CREDENTIALS, the attached service account (or an emulator's host)
                client = storage.Client()
            except Exception as e:  # none found: anonymous access, as Triton's last try (a public bucket)
                log.info("no Google Cloud credentials; reading the bucket anonymously", extra={"reason": str(e)[:200]})
                client = storage.Client.create_anonymous_client()
        self._bucket = client.bucket(bucket)
        self._client = client

    def list(self, prefix: str) -> dict[str, tuple[int, str]]:
        return {
            blob.name: (int(blob.size or 0), str(blob.etag or blob.generation))
            for blob in self._client.list_blobs(self._bucket, prefix=prefix or None)
        }

    def fetch(self, key: str, into: Path) -> None:
        self._bucket.blob(key).download_to_filename(str(into))


class AzureBucket:
    """A container in Azure Storage, read as Triton reads it: the account's shared key, a managed identity, the
    default credential chain, or anonymously."""

    def __init__(self, account: str, container: str, endpoint: str | None, credentials: dict[str, str]) -> None:
        try:
            from obstore.store import AzureStore
        except ImportError:
            raise _missing("as") from None

        options: dict[str, Any] = {"account_name": account}
        if endpoint is not None:  # a sovereign cloud's or an emulator's (AZURE_STORAGE_ENDPOINT)
            options["endpoint"] = endpoint
        key, auth, client_id = (credentials.get(k, "") for k in ("account_key", "auth_type", "client_id"))
        if auth in ("managed_identity", "default"):  # a token from the managed identity (or the chain's first)
            if client_id:
                options["client_id"] = client_id  # a user-assigned identity
        elif key:  # any other auth type with a key is the shared key, as in Triton
            options["account_key"] = key
        else:  # no key: anonymous, as Triton (a public container)
            options["skip_signature"] = True
        if auth not in ("", "key", "managed_identity", "default"):
            log.warning(
                "AZURE_STORAGE_AUTH_TYPE is none Triton knows (key, managed_identity, default): as Triton, the "
                "account's key is used where one is given, else the container is read anonymously",
                extra={"auth_type": auth},
            )
        http = endpoint is not None and endpoint.startswith("http://")
        try:
            self._store = AzureStore(container, client_options={"allow_http": True} if http else None, **options)
        except Exception as e:  # a key that is not base64, an endpoint that is no URL
            raise InvalidRequest(f"cannot use these Azure Storage settings: {_brief(e, 'as')}") from None

    def list(self, prefix: str) -> dict[str, tuple[int, str]]:
        return _listed(self._store, prefix)

    def fetch(self, key: str, into: Path) -> None:
        _fetched(self._store, key, into)


def _listed(store: Any, prefix: str) -> dict[str, tuple[int, str]]:
    """An obstore store's objects under ``prefix``: (size, ETag). Its names come without a folder marker's trailing
    ``/`` (``sync`` tells markers apart)."""
    import obstore
    from obstore.exceptions import InvalidPathError

    found: dict[str, tuple[int, str]] = {}
    try:
        for batch in obstore.list(store, prefix=prefix or None):
            for meta in batch:
                found[str(meta["path"])] = (int(meta["size"]), str(meta.get("e_tag") or meta["last_modified"]))
    except InvalidPathError as e:  # the client reads no name with an empty segment (a//b): the whole listing fails
        named = re.search(r'Path "(.*?)"', str(e))
        raise InvalidRequest(
            f"the object {named.group(1) if named else '?'!r} has a name polystack cannot read (an empty or '.' "
            "segment between slashes): rename or remove it"
        ) from None
    return found


def _fetched(store: Any, key: str, into: Path) -> None:
    """An obstore store's object into the file ``into`` (FileNotFoundError: there is no object of that name)."""
    import obstore
    from obstore.exceptions import NotFoundError

    try:
        with into.open("wb") as f:
            for chunk in obstore.get(store, key).stream():
                f.write(memoryview(chunk))
    except NotFoundError:
        raise FileNotFoundError(key) from None


def _missing(scheme: str) -> InvalidRequest:
    return InvalidRequest(
        f"reading a model repository from {scheme}:// needs polystack's cloud extra: pip install 'polystack[cloud]'"
    )


@dataclass(frozen=True)
class Location:
    scheme: str  # "s3", "gs" or "as"
    bucket: str  # Azure: the container
    prefix: str  # the repository's folder in the bucket ("": its root), without a trailing slash
    endpoint: str | None = None  # S3: a private or compatible store's (http://host:port); Azure: another cloud's
    account: str | None = None  # Azure: the storage account


def parse(location: str) -> Location:
    """``location`` as Triton reads it: ``s3://[http(s)://]host:port/bucket/path`` names a store of its own (HTTP
    unless https:// says otherwise), ``s3://bucket/path`` Amazon's; ``gs://bucket/path``;
    ``as://account[.blob.core.windows.net]/container/path`` (a query after ``?`` ignored, as Triton's)."""
    scheme, rest = location.split("://", 1)
    shown = location.partition("?")[0]  # in messages: a SAS token in the query left out
    endpoint = account = None
    if scheme == "as":
        host, _, rest = rest.partition("?")[0].partition("/")
        account = host.removesuffix(_AZURE_HOST)
        if ".blob." in account:  # another Azure cloud's host (account.blob.core.chinacloudapi.cn): its endpoint
            endpoint, account = f"https://{host}", account.split(".", 1)[0]
        if not account or not rest.partition("/")[0]:
            raise InvalidRequest(
                f"--model-repository {shown}: name the account, the container and the repository's folder in it "
                "(as://account/container/path)"
            )
    if scheme == "s3":
        protocol = "http"
        for given in ("http://", "https://"):
            if rest.startswith(given):
                protocol, rest = given[:-3], rest[len(given) :]
        host, _, after = rest.partition("/")
        if re.fullmatch(r"[^/:]+:\d+", host):  # host:port, then the bucket
            endpoint, rest = f"{protocol}://{host}", after
        elif protocol == "https" or location.startswith("s3://http://"):
            raise InvalidRequest(
                f"--model-repository {shown}: after s3://{protocol}:// comes host:port, then the bucket and path "
                "(s3://https://host:443/bucket/path)"
            )
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not bucket or ".." in PurePosixPath(prefix).parts:
        form = "as://account/container/path" if scheme == "as" else f"{scheme}://bucket/path"
        raise InvalidRequest(f"--model-repository {shown}: name the bucket and the repository's folder in it ({form})")
    return Location(scheme, bucket, prefix, endpoint, account)


def _credentials(location: str, scheme: str) -> Any:
    """``TRITON_CLOUD_CREDENTIAL_PATH``'s entry for ``location`` (the longest name it starts with), or None."""
    path = os.environ.get("TRITON_CLOUD_CREDENTIAL_PATH")
    if not path:
        return None
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise InvalidRequest(f"TRITON_CLOUD_CREDENTIAL_PATH={path}: not a readable JSON file ({e}); fix or unset it") from None
    entries = doc.get(scheme, {}) if isinstance(doc, dict) else {}
    if not isinstance(entries, dict):
        raise InvalidRequest(
            f"TRITON_CLOUD_CREDENTIAL_PATH={path}: its {scheme!r} section is not an object of locations and their "
            'credentials (Triton\'s form: {"' + scheme + '": {"": ...}}); fix it'
        )
    names = [name for name in entries if location.startswith(name)]
    return entries[max(names, key=len)] if names else None


def _aws_files() -> dict[str, str]:
    """The ``aws configure`` files' keys and region for ``AWS_PROFILE`` (default: default), where the variables
    give no keys."""
    profile = os.environ.get("AWS_PROFILE", "default")
    found: dict[str, str] = {}
    home = Path.home() / ".aws"
    files = (
        (Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE", home / "credentials")), profile),
        (Path(os.environ.get("AWS_CONFIG_FILE", home / "config")), profile if profile == "default" else f"profile {profile}"),
    )
    for path, section in files:
        parser = configparser.ConfigParser()
        with contextlib.suppress(OSError, configparser.Error):
            parser.read(path)
        if parser.has_section(section):
            keys = {"aws_access_key_id": "access_key_id", "aws_secret_access_key": "secret_access_key",
                    "aws_session_token": "session_token", "region": "region"}  # fmt: skip
            found.update({ours: parser.get(section, theirs) for theirs, ours in keys.items() if parser.has_option(section, theirs)})
    return found


def open_bucket(location: str, where: Location) -> Bucket:
    given = _credentials(location, where.scheme)
    if where.scheme == "gs":
        if given is not None and not isinstance(given, str):
            raise InvalidRequest("TRITON_CLOUD_CREDENTIAL_PATH: a gs entry is the path of a credential JSON file")
        return GcsBucket(where.bucket, given or None)
    if where.scheme == "as":
        if given is not None and not isinstance(given, dict):
            raise InvalidRequest("TRITON_CLOUD_CREDENTIAL_PATH: an as entry is an object (account_str, account_key)")
        if given is None:  # Triton's variables
            given = {"account_str": os.environ.get("AZURE_STORAGE_ACCOUNT", ""),
                     "account_key": os.environ.get("AZURE_STORAGE_KEY", ""),
                     "auth_type": os.environ.get("AZURE_STORAGE_AUTH_TYPE", ""),
                     "client_id": os.environ.get("AZURE_STORAGE_CLIENT_ID", "")}  # fmt: skip
        if any(not isinstance(v, str) for v in given.values()):
            raise InvalidRequest(
                "TRITON_CLOUD_CREDENTIAL_PATH: an as entry's values are strings (account_str, account_key, auth_type, "
                "client_id); fix it"
            )
        values = dict(given)
        account = values.get("account_str") or where.account or ""  # a given account wins over the host, as Triton's
        endpoint = os.environ.get("AZURE_STORAGE_ENDPOINT") or where.endpoint  # an emulator's (Azurite) or a cloud's
        return AzureBucket(account, where.bucket, endpoint, values)
    credentials: dict[str, str] = {}
    if isinstance(given, dict):  # Triton's names
        credentials = {"access_key_id": given.get("key_id", ""), "secret_access_key": given.get("secret_key", ""),
                       "session_token": given.get("session_token", ""), "region": given.get("region", "")}  # fmt: skip
    elif not os.environ.get("AWS_ACCESS_KEY_ID"):
        credentials = _aws_files()
    if not credentials.get("region"):
        credentials["region"] = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or ""
    return S3Bucket(where.bucket, where.endpoint, credentials)


class CloudRepository:
    """A model repository in cloud storage, served from a local copy (``local``) that ``sync`` brings up to date.

    The copy is a temporary folder of its own (``COPY_PREFIX``, removed at ``close``), or, with the scheme's mount
    directory, the repository's folder there (kept). Each is marked live for as long as this process holds it
    (``temp_folders``): a later start removes the temporary copies that killed servers left, and a second server of the
    same repository beside one holding the kept folder copies into a temporary folder of its own in the mount directory,
    never into the folder another process is writing."""

    def __init__(self, location: str, bucket: Bucket | None = None, local: Path | None = None) -> None:
        scheme, _, rest = location.partition("://")
        self.location = f"{scheme}://{rest.rstrip('/')}"
        self.shown = self.location.partition("?")[0]  # for messages and logs: a SAS token in the query left out
        self.where = parse(self.location)
        self.bucket = bucket or open_bucket(self.location, self.where)
        mount = os.environ.get(_MOUNTS[self.where.scheme])
        self._owner: IO[str] | None = None
        if local is not None:
            self.local, self._owned = local, False
        elif mount:
            if not Path(mount).is_dir():
                raise InvalidRequest(f"the mount directory {mount} for {self.shown} is not a folder; create it")
            # a folder per repository in it: two repositories never share a copy
            name = f"{self.where.bucket}-{hashlib.sha256(self.location.encode()).hexdigest()[:12]}"
            self.local, self._owned = Path(mount) / name, False
            self.local.mkdir(parents=True, exist_ok=True)
            try:
                self._owner = temp_folders.hold(self.local)
            except BlockingIOError:  # another live process copies into it
                self.local, self._owner = temp_folders.make(f"{name}-", Path(mount))
                self._owned = True
                log.info("another process copies this repository into the mount directory: a copy of its own, "
                         "removed at the exit", extra={"repository": self.shown, "copy": str(self.local)})  # fmt: skip
        else:
            self.local, self._owner = temp_folders.make(COPY_PREFIX)  # those killed servers left go first
            self._owned = True
        self.local.mkdir(parents=True, exist_ok=True)
        self._manifest = self.local / _MANIFEST
        self._said_empty = False
        try:
            self._tags: dict[str, str] = json.loads(self._manifest.read_text())
        except (OSError, ValueError):
            self._tags = {}

    def sync(self, model: str | None = None) -> bool:
        """Make the copy of the repository (or of ``model``'s folder) what the bucket holds now; whether it changed.
        Raises ``Unavailable`` where the bucket cannot be read (the copy is left as it was)."""
        if model is not None and (not model or "/" in model or model in (".", "..")):
            return False
        scope = "/".join(p for p in (self.where.prefix, model) if p)
        try:
            listed = self.bucket.list(scope + "/" if scope else "")
        except Exception as e:
            raise Unavailable(f"cannot read {self.shown}: {_brief(e, self.where.scheme)}") from None
        if not listed and model is None and not self._said_empty:  # a mistyped folder reads as an empty repository
            log.warning("the model repository in cloud storage holds no objects: check its folder's name",
                        extra={"repository": self.shown})  # fmt: skip
            self._said_empty = True
        base = self.where.prefix + "/" if self.where.prefix else ""
        wanted: dict[str, tuple[int, str, str]] = {}  # relative path -> (size, ETag, key)
        for key, (size, tag) in listed.items():
            relative = key[len(base) :]
            parts = PurePosixPath(relative).parts
            if not relative or any(p in ("..", ".") for p in parts) or relative.startswith("/"):
                log.warning("an object's name leads out of the repository; skipped", extra={"object": key})
                continue
            wanted[relative] = (size, tag, key)
        changed = False
        # the names of folders that hold other objects: an object of such a name is a folder's (Hadoop's folder blobs)
        holders = {f.as_posix() for r in wanted for f in PurePosixPath(r.rstrip("/")).parents}
        for relative, (size, tag, key) in sorted(wanted.items()):
            target = self.local / relative
            if relative.endswith("/") or relative in holders:  # a folder's marker (an ensemble's empty version)
                if target.is_file():
                    target.unlink()
                if not target.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    changed = True
                continue
            if self._tags.get(relative) == tag and (target.is_file() or (size == 0 and target.is_dir())):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.partial")
            try:
                self.bucket.fetch(key, partial)
            except FileNotFoundError:
                partial.unlink(missing_ok=True)
                if size != 0:
                    raise Unavailable(f"cannot read {self.shown}/{relative}: it went from the bucket as it was read") from None
                # a folder's marker (``ens/1/``), listed by S3's and Azure's client without its slash
                target.mkdir(parents=True, exist_ok=True)
                self._tags[relative] = tag
                changed = True
                continue
            except Exception as e:
                partial.unlink(missing_ok=True)
                raise Unavailable(f"cannot read {self.shown}/{relative}: {_brief(e, self.where.scheme)}") from None
            partial.replace(target)
            self._tags[relative] = tag
            changed = True
        root = self.local / model if model is not None else self.local
        keep = {self.local / r.rstrip("/") for r in wanted}
        holding = {folder for path in keep for folder in path.parents}  # the folders on the way to what stays
        for path in sorted(_files(root), reverse=True):  # what the bucket no longer holds
            if path == self._manifest or path in keep or path in holding:
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            self._tags.pop(path.relative_to(self.local).as_posix(), None)
            changed = True
        if model is not None and root.is_dir() and not any(r.startswith(model + "/") for r in wanted):
            shutil.rmtree(root, ignore_errors=True)  # the model's folder is gone from the bucket
            changed = True
        if changed:
            self._manifest.write_text(json.dumps(self._tags))
            log.info("model repository copied from cloud storage", extra={
                "repository": self.shown, "model": model, "copy": str(self.local)})  # fmt: skip
        return changed

    def close(self) -> None:
        """Remove the copy, where it is a temporary folder of its own; give up the kept one."""
        temp_folders.release(self.local, self._owner, remove=self._owned)
        self._owner = None


_NO_CREDENTIALS = {
    "s3": "no AWS credentials: none in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, the aws configure files or "
    "TRITON_CLOUD_CREDENTIAL_PATH, and no instance role answered",
    "as": "no Azure credentials: AZURE_STORAGE_AUTH_TYPE asks for a managed identity, and none answered; set "
    "AZURE_STORAGE_KEY (or TRITON_CLOUD_CREDENTIAL_PATH's as entry) instead",
}


def _brief(e: Exception, scheme: str = "s3") -> str:
    """A store's error on one line: the store's own code and message where its answer has them (S3's and Azure's
    XML: ``NoSuchBucket: The specified bucket does not exist``)."""
    text = str(e)
    if "169.254.169.254" in text and scheme in _NO_CREDENTIALS:  # the instance's role or identity was asked, none
        return _NO_CREDENTIALS[scheme]
    unreachable = re.search(r"Error performing \w+ (https?://[^/?\s]+)\S* in [^,]*, after (\d+) retries.*? - HTTP error: ([^\n]*)", text)
    if unreachable is not None:  # no answer at all (a wrong host or account, no network): the store's address
        host, retries, why = unreachable.groups()
        return f"cannot reach {host} ({why.strip()}, {int(retries) + 1} tries)"
    code, message = re.search(r"<Code>(.*?)</Code>", text), re.search(r"<Message>(.*?)</Message>", text, re.S)
    if code is not None:  # Azure's message goes on with its request's id and time, a line each
        first = message.group(1).strip().splitlines()[0] if message and message.group(1).strip() else ""
        return f"{code.group(1)}: {first}".strip(": ")
    return " ".join(text.split())[:300] or type(e).__name__


def _files(root: Path) -> Iterator[Path]:
    """Every file and folder under ``root`` (itself left out)."""
    if not root.is_dir():
        return
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            yield Path(folder) / name
