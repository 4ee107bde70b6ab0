"""Writes a test's objects into moto's S3 server with AWS's own SDK (boto3), run from .venv-cloud (boto3 pins an
older python-dateutil than polystack's venv has): ``python cloud_objects.py ENDPOINT BUCKET put FOLDER PREFIX``
uploads a folder's files under PREFIX (creating the bucket), ``... delete PREFIX`` removes the objects under it."""

from __future__ import annotations

import sys
from pathlib import Path

import boto3


def main() -> None:
    endpoint, bucket, command, *args = sys.argv[1:]
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    if command == "put":
        folder, prefix = Path(args[0]), args[1].strip("/")
        if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=bucket)
        for path in sorted(folder.rglob("*")):
            key = f"{prefix}/{path.relative_to(folder).as_posix()}"
            if path.is_dir():
                if not any(path.iterdir()):  # an empty folder (an ensemble's version): a marker object
                    s3.put_object(Bucket=bucket, Key=key + "/", Body=b"")
            else:
                s3.upload_file(str(path), bucket, key)
    elif command == "delete":
        prefix = args[0].strip("/") + "/"
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=item["Key"])
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main()
