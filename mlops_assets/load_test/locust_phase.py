"""One phase of a load test in its own process: Locust offers a fixed arrival rate to a gRPC inference server.

    python -m mlops_assets.load_test.locust_phase SPEC.json PAYLOADS.pickle OUT.json

Locust patches the standard library with gevent when it is imported, so it never runs inside the Dagster
process. grpc is switched to gevent's loop before any channel exists; without that, each blocking call stalls
every greenlet and the "fixed rate" collapses into one request at a time.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import sys
import time

# Arrivals per simulated user; more users at higher rates keep each one's pacing coarse enough for gevent.
USER_RPS = 20.0
TOKEN_VARIABLE = "MLOPS_SERVE_TOKEN"


def run(spec: dict, payloads: list[dict], out_path: str) -> None:
    from locust import User, constant_pacing, task  # first: importing locust patches the standard library
    from locust.env import Environment

    # isort: split
    import gevent
    import grpc.experimental.gevent as grpc_gevent

    grpc_gevent.init_gevent()
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from mlops_assets.oip_client import infer_inputs  # after the patching: it reaches tritonclient and urllib

    client = grpcclient.InferenceServerClient(spec["url"])
    token = os.environ.get(TOKEN_VARIABLE)
    headers = {"authorization": f"Bearer {token}"} if token else None
    requests = [infer_inputs(feeds) for feeds in payloads]
    rng = random.Random(spec["seed"])
    users = max(1, math.ceil(spec["rps"] / USER_RPS))
    in_flight = gevent.pool.Group()
    sent_at, latency_ms, status = [], [], []

    def send() -> None:
        begin = time.perf_counter()
        try:
            client.infer(
                spec["model_name"],
                rng.choice(requests),
                model_version=spec["version"],
                headers=headers,
                client_timeout=spec["timeout_s"],
            )
            outcome = "OK"
        except InferenceServerException as error:
            outcome = str(error.status() or "UNKNOWN").removeprefix("StatusCode.")
        sent_at.append(begin - started)
        latency_ms.append((time.perf_counter() - begin) * 1e3)
        status.append(outcome)

    class OpenLoopUser(User):
        # Each arrival runs in its own greenlet, so a slow answer never delays the next one: open loop.
        wait_time = constant_pacing(users / spec["rps"])

        def on_start(self) -> None:
            gevent.sleep(rng.uniform(0, users / spec["rps"]))  # spread the users' arrivals over one interval

        @task
        def arrive(self) -> None:
            in_flight.spawn(send)

    environment = Environment(user_classes=[OpenLoopUser])
    runner = environment.create_local_runner()
    cpu_before, started = time.process_time(), time.perf_counter()
    runner.start(users, spawn_rate=100, wait=False)  # all users at once; on_start spreads their arrivals
    gevent.sleep(spec["duration_s"])
    runner.quit()
    in_flight.join(timeout=spec["timeout_s"] + 1)
    generator_cpu_s = time.process_time() - cpu_before
    with open(out_path, "w") as out:
        json.dump(
            {"sent_at_s": sent_at, "latency_ms": latency_ms, "status": status, "generator_cpu_s": generator_cpu_s},
            out,
        )


def main(argv: list[str]) -> None:
    spec_path, payloads_path, out_path = argv
    with open(spec_path) as spec_file, open(payloads_path, "rb") as payload_file:
        spec, payloads = json.load(spec_file), pickle.load(payload_file)
    run(spec, payloads, out_path)
    # Skip the interpreter's teardown: closing a grpc channel from a finalizer under gevent can hang for good.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
