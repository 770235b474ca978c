"""The FastAPI app: wiring, errors in OpenAI's shape, the body-size cap, metrics, health.

    ragtune serve --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import ipaddress
import time
import warnings
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ragtune.platform.assistant import Assistant
from ragtune.platform.errors import OverloadedError, RagtuneError
from ragtune.platform.settings import Settings
from ragtune.serve.auth import ACCESS, LOOPBACK, Keys
from ragtune.serve.deps import ServerState, principal, state
from ragtune.serve.jobs import Jobs
from ragtune.serve.metrics import Metrics


def is_loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def error_body(message: str, kind: str, status: int, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, whether or not Content-Length says so."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        body = JSONResponse(error_body(f"request body over {self.limit // 2**20} MB "
                                       "(RAGTUNE_MAX_UPLOAD_MB)", "invalid_request_error", 413),
                            status_code=413)
        await send({"type": "http.response.start", "status": 413,
                    "headers": body.raw_headers})
        await send({"type": "http.response.body", "body": body.body})


class _TooLarge(Exception):
    pass


def create_app(settings: Settings, engine: Any = None, host: str = "127.0.0.1") -> FastAPI:
    """The app for `settings`. `engine` defaults to the in-process transformers engine."""
    from ragtune.serve import collections_api, openai_api, route_api, ui_api

    if engine is None:
        from ragtune.serve.engine import Engine

        engine = Engine(settings)
    keys = Keys(settings.keys_file)
    open_allowed = is_loopback(host)
    if keys.empty():
        if not open_allowed:
            raise RagtuneError(
                f"refusing to serve on {host} without API keys: create one with "
                "`ragtune keys create --scopes query` or bind to 127.0.0.1")
        warnings.warn("no API keys exist: the server is open to anyone on this machine "
                      "(create keys with `ragtune keys create`)", stacklevel=2)
    metrics = Metrics(engine.queue_depth, lambda: engine.running)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        yield
        app.state.ragtune.jobs.close()

    app = FastAPI(title="ragtune", version=_version(), lifespan=lifespan,
                  description="Facts go in the index, behaviour goes in the adapter: an "
                  "OpenAI-compatible assistant with retrieval and LoRA adapters.")
    app.state.ragtune = ServerState(settings, engine, Assistant(engine, settings), keys,
                                    Jobs(settings.jobs_dir), metrics, open_allowed)
    app.include_router(openai_api.router)
    app.include_router(collections_api.router)
    app.include_router(route_api.router)
    app.include_router(ui_api.router)  # the web page at /

    @app.exception_handler(RagtuneError)
    async def _ragtune_error(request: Request, exc: RagtuneError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, OverloadedError) else None
        return JSONResponse(error_body(str(exc), exc.kind, exc.status), exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse(error_body("the body is not valid JSON", "invalid_request_error",
                                           400), 400)
        first = errors[0] if errors else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        msg = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body')}: "
                        f"{e.get('msg')}" for e in errors[:5])
        return JSONResponse(error_body(msg, "invalid_request_error", 422, where or None), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error", exc.status_code),
                            exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error",
                                       500), 500)

    @app.middleware("http")
    async def _measure(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests.labels(path, request.method, str(response.status_code)).inc()
        metrics.latency.labels(path, request.method).observe(time.perf_counter() - started)
        return response

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    def readyz(request: Request) -> JSONResponse:
        """The generation worker is running and the queue has room."""
        eng = state(request).engine
        ok = eng.ready()
        return JSONResponse({"status": "ready" if ok else "not ready", "model": eng.model_name,
                             "queue_depth": eng.queue_depth()}, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["ops"])
    def prometheus(request: Request) -> Response:
        """Prometheus metrics (needs the admin scope when keys exist)."""
        principal(request)  # the ACCESS rule: admin
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    _check_access_table(app)
    return app


def with_limits(app: FastAPI, settings: Settings) -> Any:
    """The ASGI app to run: `app` behind the body-size cap."""
    return BodyLimit(app, int(settings.max_upload_mb * 2**20))


def _check_access_table(app: FastAPI) -> None:
    """Every route must have an explicit access rule in `auth.ACCESS`."""
    for route in app.routes:
        for method in getattr(route, "methods", None) or ():
            if method in ("HEAD", "OPTIONS"):
                continue
            if f"{method} {route.path}" not in ACCESS and not route.path.startswith("/docs/"):
                raise RuntimeError(f"route {method} {route.path} has no access rule in auth.ACCESS")


def _version() -> str:
    from ragtune import __version__

    return __version__


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the API with uvicorn until SIGINT/SIGTERM (in-flight requests get 30 s to finish)."""
    import uvicorn

    app = create_app(settings, host=host)
    uvicorn.run(with_limits(app, settings), host=host, port=port, log_level="info",
                timeout_graceful_shutdown=30)
