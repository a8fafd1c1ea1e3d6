#!/usr/bin/env python3
"""The image's HEALTHCHECK, for whichever of its two commands the container runs.

`mlops-serve`: its HTTP side port answers /health (200 while the process is alive and not stopping).
Dagster code server: the standard gRPC health service answers SERVING for service "DagsterApi", which is
what `dagster api grpc-health-check` asks, without paying for importing dagster every 30 seconds.
The serving port is tried first; a refused connection there means this container runs the code server.
Exit 0 healthy, 1 unhealthy (Docker's convention).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 5.0


def serving_health(port: int) -> bool | None:
    """True/False from mlops-serve's /health, or None when nothing listens on its side port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=TIMEOUT_S) as response:
            return response.status == 200
    except urllib.error.HTTPError:
        return False  # the server answered, and not with 200
    except (ConnectionRefusedError, urllib.error.URLError) as error:
        if isinstance(error, ConnectionRefusedError) or isinstance(error.reason, ConnectionRefusedError):
            return None
        return False


def dagster_health(port: int) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="DagsterApi"), timeout=TIMEOUT_S
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def main() -> int:
    serving = serving_health(int(os.environ.get("MLOPS_SERVE_METRICS_PORT") or 8002))
    if serving is not None:
        return 0 if serving else 1
    return 0 if dagster_health(int(os.environ.get("DAGSTER_GRPC_PORT") or 4000)) else 1


if __name__ == "__main__":
    sys.exit(main())
