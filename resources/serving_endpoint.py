"""The running inference server the `deployment` asset verifies after each promotion (optional)."""

import os

import dagster as dg

TOKEN_VARIABLE = "MLOPS_SERVE_TOKEN"


class ServingEndpoint(dg.ConfigurableResource):
    """gRPC address of an `mlops-serve` (or any Open Inference Protocol server) following the registry.

    Leave `url` empty on a laptop without a server: the deployment asset then records that nothing
    was checked instead of failing. A server that answers, but refuses, always fails the asset.
    """

    url: str | None = None
    """host:port of the gRPC endpoint, e.g. 127.0.0.1:8001."""
    token: str | None = None
    """Bearer token the server requires (`mlops-serve --token`); set it with dg.EnvVar("MLOPS_SERVE_TOKEN")."""
    ready_timeout_s: float = 120.0
    """How long the server may take to pick up a promotion (its registry poll interval plus warm-up)."""
    call_timeout_s: float = 30.0
    """Deadline of each gRPC call, so a server that accepts connections but never answers cannot hang a run."""

    def client(self):
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.url)

    def headers(self) -> dict[str, str] | None:
        return {"authorization": f"Bearer {self.token}"} if self.token else None


def token_from_environment(required: bool) -> dg.EnvVar | None:
    """The token as a reference to MLOPS_SERVE_TOKEN, resolved when a run starts, never while definitions load.

    `required`: reference it even when the loading process does not have it (production, where the code
    server loading definitions and the run worker executing them are different processes with different
    secrets); a run without it then fails at start, naming the variable.
    """
    return dg.EnvVar(TOKEN_VARIABLE) if required or os.environ.get(TOKEN_VARIABLE) else None
