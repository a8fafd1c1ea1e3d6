"""A test server that leaks: an Open Inference Protocol ModelInfer that keeps LEAK_BYTES of every request forever.

    python tests/mlops_assets/leaking_server.py PORT

It answers with an empty output list (the load test reads only the status), so the load test's memory judgement
can be checked on a real process whose RSS really grows."""

import sys
from concurrent import futures

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

LEAK_BYTES = 256 * 1024


class LeakingService(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self):
        self.kept: list[bytearray] = []

    def ModelInfer(self, request, context):  # noqa: N802 (the protocol's name)
        self.kept.append(bytearray(b"x" * LEAK_BYTES))  # written, so the pages are resident
        return service_pb2.ModelInferResponse(model_name=request.model_name, model_version=request.model_version)


def main(port: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(LeakingService(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("serving", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main(int(sys.argv[1]))
