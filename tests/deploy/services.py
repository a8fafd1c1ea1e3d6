"""Real engines for the production tests: PostgreSQL, an S3-compatible server (moto_server) and an MLflow
tracking server, each on loopback. CI's .ci/run starts PostgreSQL and moto_server and names them in
MLOPS_TEST_POSTGRES_URL and MLOPS_TEST_S3_ENDPOINT; without those, the fixtures start private ones from
the binaries they find (initdb/pg_ctl from Debian's postgresql, moto_server from the venv)."""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from tests.deploy.support import free_port, http_status, start, stop, tail, wait_until

REQUIRE = "MLOPS_REQUIRE_PRODUCTION_TESTS"  # CI sets it: a missing engine fails instead of skipping
AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def unavailable(reason: str):
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{reason} ({REQUIRE}=1: CI must provide it)")
    pytest.skip(reason)


def venv_tool(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


# --- PostgreSQL ------------------------------------------------------------------------------------


@dataclass
class Postgres:
    host: str
    port: int
    user: str
    password: str

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://{quote(self.user)}:{quote(self.password)}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres"):
        import psycopg2

        return psycopg2.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=database, connect_timeout=5
        )

    @contextlib.contextmanager
    def database(self, prefix: str) -> Iterator[str]:
        """A new, empty database for one test module, dropped afterwards (reruns never see old state)."""
        name = f"{prefix}_{secrets.token_hex(4)}"
        admin = self.connect()
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        try:
            yield name
        finally:
            with admin.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.close()


def _postgres_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    url = os.environ.get("MLOPS_TEST_POSTGRES_URL")
    if url:
        parts = urlsplit(url)
        server = Postgres(parts.hostname or "127.0.0.1", parts.port or 5432, parts.username or "", parts.password or "")
        try:
            server.connect().close()
        except Exception as error:  # psycopg2.OperationalError, with the server's reason
            unavailable(f"MLOPS_TEST_POSTGRES_URL does not answer: {error}")
        yield server
        return

    bindir = _postgres_bin()
    if bindir is None:
        unavailable("no PostgreSQL server binaries (apt-get install postgresql), and MLOPS_TEST_POSTGRES_URL is unset")
    # A private cluster; PostgreSQL refuses to run as root, so as root it runs as the `postgres` user.
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="mlops-pg-", dir="/tmp"))
    if as_postgres:
        shutil.chown(folder, "postgres", "postgres")
    server = Postgres("127.0.0.1", free_port(), "mlops", secrets.token_hex(8))
    pwfile = folder / "pw"
    pwfile.write_text(server.password)
    if as_postgres:
        shutil.chown(pwfile, "postgres", "postgres")
    data, log = folder / "data", folder / "postgres.log"
    try:
        subprocess.run(
            [*as_postgres, str(bindir / "initdb"), "-D", str(data), "-U", server.user, f"--pwfile={pwfile}",
             "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        options = f"-c listen_addresses=127.0.0.1 -p {server.port} -k {folder} -c fsync=off"
        subprocess.run(
            [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "start"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        yield server
    except subprocess.CalledProcessError as error:
        raise AssertionError(f"{error.cmd[len(as_postgres)]} failed: {error.stderr.decode()}\n{tail(log)}") from error
    finally:
        subprocess.run(
            [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True, timeout=60,
        )  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


# --- S3 --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def s3_server(logs: Path) -> Iterator[str]:
    """The endpoint URL of an S3-compatible server on loopback."""
    endpoint = os.environ.get("MLOPS_TEST_S3_ENDPOINT")
    if endpoint:
        if http_status(endpoint + "/moto-api/") is None and http_status(endpoint) is None:
            unavailable(f"MLOPS_TEST_S3_ENDPOINT={endpoint} does not answer")
        yield endpoint
        return
    moto = venv_tool("moto_server")
    if moto is None:
        unavailable("moto_server is not installed (pip package moto[server]), and MLOPS_TEST_S3_ENDPOINT is unset")
    port = free_port()
    process = start([moto, "-H", "127.0.0.1", "-p", str(port)], logs / "moto.log")
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_status(endpoint + "/moto-api/") == 200, 60, "moto_server", process=process)
        yield endpoint
    finally:
        stop(process)


# --- MLflow tracking server ------------------------------------------------------------------------


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts_uri: str, env: dict[str, str], logs: Path) -> Iterator[str]:
    """`mlflow server` with one worker, runs and registry in `backend_uri`, artifacts proxied to `artifacts_uri`."""
    mlflow = venv_tool("mlflow")
    port = free_port()
    command = [
        mlflow, "server", "--workers", "1", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", backend_uri, "--artifacts-destination", artifacts_uri,
    ]  # fmt: skip
    process = start(command, logs / "mlflow.log", env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_status(url + "/health") == 200, 180, "mlflow server /health", 0.5, process)
        yield url
    except AssertionError as error:
        raise AssertionError(f"{error}\n{tail(logs / 'mlflow.log')}") from error
    finally:
        stop(process)
