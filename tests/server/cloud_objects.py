"""Writes a test's objects into a cloud store with the cloud's own SDK, run from .venv-cloud (boto3 pins an older
python-dateutil than polystack's venv has): ``python cloud_objects.py STORE ADDRESS BUCKET put FOLDER PREFIX``
uploads a folder's files under PREFIX (creating the bucket), ``... delete PREFIX`` removes the objects under it.
STORE is ``s3`` (ADDRESS: moto's endpoint; boto3) or ``azure`` (ADDRESS: a connection string; azure-storage-blob;
BUCKET: the container, created public with ``put-public``; ``touch KEY`` writes an empty blob of that name)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any


def _files(folder: Path, prefix: str) -> list[tuple[str, Path | None]]:
    """Each object to write: its key and its file (None: an empty folder's marker, an ensemble's empty version)."""
    found: list[tuple[str, Path | None]] = []
    for path in sorted(folder.rglob("*")):
        key = f"{prefix}/{path.relative_to(folder).as_posix()}"
        if path.is_file():
            found.append((key, path))
        elif not any(path.iterdir()):
            found.append((key + "/", None))
    return found


def s3(endpoint: str, bucket: str, command: str, args: list[str]) -> None:
    import boto3

    client: Any = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    if command == "put":
        if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=bucket)
        for key, path in _files(Path(args[0]), args[1].strip("/")):
            if path is None:
                client.put_object(Bucket=bucket, Key=key, Body=b"")
            else:
                client.upload_file(str(path), bucket, key)
    elif command == "delete":
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=args[0].strip("/") + "/"):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=item["Key"])
    else:
        raise SystemExit(f"unknown command {command!r}")


def azure(connection: str, container: str, command: str, args: list[str]) -> None:
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient

    client = BlobServiceClient.from_connection_string(connection).get_container_client(container)
    if command in ("put", "put-public"):
        with contextlib.suppress(ResourceExistsError):  # made by an earlier put
            client.create_container(public_access="container" if command == "put-public" else None)
        for key, path in _files(Path(args[0]), args[1].strip("/")):
            client.upload_blob(key, b"" if path is None else path.read_bytes(), overwrite=True)
    elif command == "delete":
        for blob in list(client.list_blobs(name_starts_with=args[0].strip("/") + "/")):
            client.delete_blob(blob.name)
    elif command == "touch":  # an empty blob of exactly this name (a Hadoop folder blob, an odd name)
        client.upload_blob(args[0], b"", overwrite=True)
    else:
        raise SystemExit(f"unknown command {command!r}")


def main() -> None:
    store, address, bucket, command, *args = sys.argv[1:]
    {"s3": s3, "azure": azure}[store](address, bucket, command, args)


if __name__ == "__main__":
    main()
