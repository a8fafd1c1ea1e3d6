"""The running inference server the `deployment` asset verifies after each promotion (optional)."""

import dagster as dg


class ServingEndpoint(dg.ConfigurableResource):
    """gRPC address of an `mlops-serve` (or any Open Inference Protocol server) following the registry.

    Leave `url` empty on a laptop without a server: the deployment asset then records that nothing
    was checked instead of failing.
    """

    url: str | None = None
    """host:port of the gRPC endpoint, e.g. 127.0.0.1:8001."""
    token: str | None = None
    """Bearer token, when the server requires one."""
    ready_timeout_s: float = 120.0
    """How long the server may take to pick up a promotion (its registry poll interval plus warm-up)."""

    def client(self):
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.url)

    def headers(self) -> dict[str, str] | None:
        return {"authorization": f"Bearer {self.token}"} if self.token else None
