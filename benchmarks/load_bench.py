"""The load test's own overhead: CPU the load generator spends per request against the server's.

    python -m benchmarks.load_bench            # 10 s at each rate
    python -m benchmarks.load_bench --quick    # 3 s at each rate

On a 2-core machine the generator shares the cores with the server it measures; this says how much of the
machine the generator takes at each rate (Locust in its own process, tritonclient over gRPC, open loop), so the
load test's figures can be read with that in mind. The server is mlops-serve with the production settings of
the load test, serving the flight-delay demo model from a file. Results go to benchmarks/results/load.json.
"""

import argparse
import tempfile
from pathlib import Path

from benchmarks.common import write_result
from mlops_assets.load_test.candidate_server import CandidateServer, file_source
from mlops_assets.load_test.driver import Target, drive
from mlops_assets.load_test.figures import summarize
from serving import demo_models as dm

RATES = [20.0, 100.0, 200.0]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s at each rate instead of 10")
    args = parser.parse_args(argv)
    seconds = 3.0 if args.quick else 10.0
    rows = dm.flight_rows(64)
    payloads = [{name: column[i : i + 1] for name, column in rows.items()} for i in range(64)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = dm.save(dm.flight_model(seed=0), folder / "flight.onnx")
        with CandidateServer(file_source(model), folder) as server:
            target = Target(server.url, "flight_delay", "1")
            run = drive(target, payloads, RATES, seconds, 5.0, folder, server.process.pid)
    per_rate = []
    for record in run.phases:
        phase = summarize(record)
        generator_ms = phase.generator_cpu_s * 1e3 / phase.requests
        server_ms = phase.server_cpu_s * 1e3 / phase.requests
        ratio = generator_ms / server_ms if server_ms else None
        per_rate.append(
            {
                "offered_rps": phase.offered_rps,
                "arrival_rps": phase.arrival_rps,
                "requests": phase.requests,
                "p99_ms": phase.p99_ms,
                "generator_cpu_ms_per_request": generator_ms,
                "server_cpu_ms_per_request": server_ms,
                "generator_to_server_cpu": ratio,
                "generator_cores_busy": phase.generator_cpu_s / seconds,
                "server_cores_busy": phase.server_cpu_s / seconds,
            }
        )
        print(
            f"{phase.offered_rps:>6g} req/s offered, {phase.arrival_rps:6.1f} achieved: generator "
            f"{generator_ms:.3f} ms CPU/request, server {server_ms:.3f} ms (ratio {ratio or float('nan'):.2f})"
        )
    figures = {"seconds_per_rate": seconds, "rates": per_rate}
    write_result("load", figures)
    return figures


if __name__ == "__main__":
    main()
