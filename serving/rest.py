"""The Open Inference Protocol's HTTP/REST binding (KServe v2 REST), as Triton serves it on port 8000.

Each worker serves it with aiohttp on its own event loop, beside gRPC and like gRPC sharing the port
between workers (SO_REUSEPORT), so a request reaches `serving.dataplane` without a thread hop: the
same lookup, batching, validation, accounting and prediction log as gRPC. This module only routes
and converts JSON (`serving.rest_codec`). Errors map from their gRPC codes (`serving.errors.HTTP_STATUS`)
and come back as `{"error": "..."}`, as KServe and Triton send them.

    GET  /v2/health/live | /v2/health/ready            open, like gRPC ServerLive / ServerReady
    GET  /v2                                           server metadata
    GET  /v2/models/{name}[/versions/{v}]              model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready        200 ready, 503 not (yet), 404 unknown
    POST /v2/models/{name}[/versions/{v}]/infer        inference
"""

from __future__ import annotations

import logging
import ssl

import orjson
from aiohttp import web

from serving.auth import MISSING_TOKEN, BearerTokens
from serving.dataplane import SERVER_NAME, SERVER_VERSION, DataPlane
from serving.errors import HTTP_STATUS, INTERNAL_MESSAGE, MAX_MESSAGE_CHARS, InvalidInput, ServingError
from serving.rest_codec import HEADER_LENGTH, parse_request

log = logging.getLogger("serving.rest")

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
EXTENSIONS = ["binary_tensor_data"]
_JSON = "application/json"


def _json(document, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(document), status=status, content_type=_JSON)


def _error(status: int, message: str, headers=None) -> web.Response:
    return web.Response(
        body=orjson.dumps({"error": message[:MAX_MESSAGE_CHARS]}), status=status, content_type=_JSON, headers=headers
    )


def build_app(plane: DataPlane, tokens: BearerTokens, max_body_bytes: int, max_concurrent: int = 0) -> web.Application:
    in_flight = 0

    @web.middleware
    async def guard(request: web.Request, handler):
        """Auth before the body is read, a cap on requests in flight, and every error as JSON."""
        nonlocal in_flight
        if request.path not in OPEN_PATHS:
            supplied = request.headers.get("Authorization")
            if not tokens.opens_data_plane(supplied.encode() if supplied is not None else None):
                log.warning("call refused", extra={"path": request.path, "code": "UNAUTHENTICATED"})
                return _error(401, MISSING_TOKEN, {"WWW-Authenticate": "Bearer"})
            if max_concurrent and in_flight >= max_concurrent:
                return _error(429, f"too many requests in flight (at most {max_concurrent})")
        in_flight += 1
        try:
            return await handler(request)
        except ServingError as exc:
            return _error(HTTP_STATUS.get(exc.code, 500), exc.reason)
        except web.HTTPException as exc:  # aiohttp's own: unknown path, wrong method, body too large
            return _error(exc.status, exc.reason)
        except Exception:
            log.error("unhandled error", exc_info=True, extra={"path": request.path})
            return _error(500, INTERNAL_MESSAGE)
        finally:
            in_flight -= 1

    def model_of(request: web.Request) -> tuple[str, str]:
        return request.match_info["name"], request.match_info.get("version", "")

    async def live(request):
        return _json({"live": True})

    async def ready(request):
        ok = plane.ready()
        return _json({"ready": ok}, 200 if ok else 503)

    async def server_metadata(request):
        return _json({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS})

    async def model_metadata(request):
        return _json(plane.model_metadata(*model_of(request)))

    async def model_ready(request):
        name, version = model_of(request)
        ok = plane.model_ready(name, version)
        if not ok:
            plane.model(name, version)  # says why: an unknown model or version is 404, one not loaded 503
        return _json({"name": name, "ready": ok}, 200 if ok else 503)

    async def infer(request):
        name, version = model_of(request)
        try:
            call = parse_request(await request.read(), request.headers.get(HEADER_LENGTH), name, version)
        except InvalidInput as exc:
            plane.refused(exc)
            raise
        body, json_length = await plane.infer(call)
        if json_length is None:
            return web.Response(body=body, content_type=_JSON)
        return web.Response(
            body=body, content_type="application/octet-stream", headers={HEADER_LENGTH: str(json_length)}
        )

    app = web.Application(middlewares=[guard], client_max_size=max_body_bytes)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2", server_metadata)
    for model in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.router.add_get(model, model_metadata)
        app.router.add_get(f"{model}/ready", model_ready)
        app.router.add_post(f"{model}/infer", infer)
    return app


async def start_rest(plane: DataPlane, config) -> web.AppRunner:
    """Serve the binding on `config.http_port` (0: any free port; `runner.addresses` tells which)."""
    app = build_app(
        plane, BearerTokens(config.token, config.admin_token), config.max_message_bytes, config.max_concurrent_rpcs
    )
    # Requests still inside when it stops have had the grace period already (Worker.run drains first).
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    context = None
    if config.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(config.tls_cert, config.tls_key)
    site = web.TCPSite(
        runner, config.host, config.http_port, ssl_context=context, reuse_port=config.workers > 1 or None
    )
    await site.start()
    return runner
