"""Where assets keep their files (feature Parquet, checkpoints, ONNX, predictions).

Assets address files by key (`features/2013-01.parquet`); the store maps keys to a local folder
or an S3 prefix, so switching to S3 is configuration only.
"""

from __future__ import annotations

import io
from pathlib import Path

import dagster as dg
import pandas as pd


class ArtifactStore(dg.ConfigurableResource):
    """Interface every store implements; assets take `store: ArtifactStore`."""

    def write_bytes(self, key: str, data: bytes) -> str:
        raise NotImplementedError

    def read_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def uri(self, key: str) -> str:
        raise NotImplementedError

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under `prefix`, sorted (a prefix listing: the store's layout puts a month under one)."""
        raise NotImplementedError

    def write_frame(self, key: str, frame: pd.DataFrame) -> str:
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        return self.write_bytes(key, buffer.getvalue())

    def read_frame(self, key: str) -> pd.DataFrame:
        return pd.read_parquet(io.BytesIO(self.read_bytes(key)))


class LocalArtifactStore(ArtifactStore):
    """Files under a local folder (the embedded default: $MLOPS_HOME/artifacts)."""

    root: str

    def _path(self, key: str) -> Path:
        return Path(self.root) / key

    def write_bytes(self, key: str, data: bytes) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # readers never see a half-written file
        return str(path)

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def uri(self, key: str) -> str:
        return str(self._path(key))

    def list_keys(self, prefix: str) -> list[str]:
        root = Path(self.root)
        folder = self._path(prefix.rstrip("/")) if prefix.endswith("/") else self._path(prefix).parent
        if not folder.is_dir():
            return []
        keys = (path.relative_to(root).as_posix() for path in folder.rglob("*") if path.is_file())
        # ".tmp" files are writes in progress (write_bytes renames them when complete).
        return sorted(k for k in keys if k.startswith(prefix) and not k.endswith(".tmp"))


class S3ArtifactStore(ArtifactStore):
    """Objects under s3://bucket/prefix; endpoint_url targets any S3-compatible server."""

    bucket: str
    prefix: str = "mlops"
    endpoint_url: str | None = None
    region_name: str | None = None

    def _client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region_name)

    def _key(self, key: str) -> str:
        return f"{self.prefix.rstrip('/')}/{key}" if self.prefix else key

    def write_bytes(self, key: str, data: bytes) -> str:
        self._client().put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        return self.uri(key)

    def read_bytes(self, key: str) -> bytes:
        return self._client().get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._client().head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as error:
            if error.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        self._client().delete_object(Bucket=self.bucket, Key=self._key(key))

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def list_keys(self, prefix: str) -> list[str]:
        strip = len(self._key(""))
        pages = self._client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix))
        return sorted(item["Key"][strip:] for page in pages for item in page.get("Contents", []))
