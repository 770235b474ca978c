"""The FastAPI app: wiring, errors in OpenAI's shape, the body-size cap, metrics, health.

    ragtune serve --host 127.0.0.1 --port 8000

On SIGTERM or SIGINT the server drains: it stops accepting connections, answers any request that
still arrives with 503, lets in-flight requests and streams finish (up to `GRACE_SECONDS`), then
stops the generation worker and exits.
"""

from __future__ import annotations

import ipaddress
import time
import warnings
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ragtune.platform.assistant import Assistant
from ragtune.platform.errors import OverloadedError, RagtuneError
from ragtune.platform.settings import Settings
from ragtune.serve.auth import ACCESS, LOOPBACK, Keys
from ragtune.serve.deps import ServerState, principal, route_path, scrub_paths, state
from ragtune.serve.feedback import FeedbackStore
from ragtune.serve.filestore import FileStore
from ragtune.serve.ft_jobs import FineTuning
from ragtune.serve.jobs import Jobs
from ragtune.serve.metrics import Metrics
from ragtune.serve.schemas import ERRORS
from ragtune.train.auto import PlanChooser

GRACE_SECONDS = 30  # how long in-flight requests may take to finish after a stop signal
ALWAYS_OPEN = ("/healthz",)  # answered while draining: the process is still up


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
        seen, refused, started = 0, False, False

        async def counted() -> dict:
            # A body that grows past the limit (chunked, or lying about its length): answer 413
            # now and tell the app the client left, so it stops reading and stores nothing.
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                refused = True
                if not started:
                    await self._refuse(send)
                return {"type": "http.disconnect"}
            return message

        async def guarded(message: dict) -> None:
            nonlocal started
            if refused:
                return  # the 413 went out; whatever the app answers to the "disconnect" is moot
            started = True
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not refused:
                raise

    async def _refuse(self, send: Any) -> None:
        """The 413; the app's own answer, if it still makes one, is dropped (see `__call__`)."""
        body = JSONResponse(error_body(f"request body over {self.limit // 2**20} MB "
                                       "(RAGTUNE_MAX_UPLOAD_MB)", "invalid_request_error", 413),
                            status_code=413)
        await send({"type": "http.response.start", "status": 413,
                    "headers": body.raw_headers})
        await send({"type": "http.response.body", "body": body.body})


def create_app(settings: Settings, engine: Any = None, host: str = "127.0.0.1") -> FastAPI:
    """The app for `settings`. `engine` defaults to the backend `settings.backend` names (the
    in-process transformers engine, or vLLM: generate/backend.py)."""
    from ragtune.serve.routes import (
        adapters,
        chat,
        collections,
        embeddings,
        feedback,
        files,
        fine_tuning,
        jobs,
        models,
        responses,
        route,
        synth,
        ui,
        vector_stores,
    )

    keys = Keys(settings.keys_file)
    open_allowed = is_loopback(host)
    if keys.empty():
        if not open_allowed:
            raise RagtuneError(
                f"refusing to serve on {host} without API keys: create one with "
                "`ragtune keys create --scopes query` or bind to 127.0.0.1")
        warnings.warn("no API keys exist: the server is open to anyone on this machine "
                      "(create keys with `ragtune keys create`)", stacklevel=2)
    owns_engine = engine is None
    if owns_engine:
        from ragtune.generate.backend import create_backend

        engine = create_backend(settings)
    metrics = Metrics(engine.queue_depth, lambda: engine.running)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        yield
        # uvicorn calls this after in-flight requests finished (or the grace period ended)
        app.state.ragtune.draining = True
        app.state.ragtune.jobs.close()
        app.state.ragtune.fine_tuning.close()
        if owns_engine:
            engine.close()

    app = FastAPI(title="ragtune", version=_version(), lifespan=lifespan, responses=ERRORS,
                  description="Facts go in the index, behaviour goes in the adapter: an "
                  "OpenAI-compatible assistant with retrieval and LoRA adapters.")
    job_queue = Jobs(settings.jobs_dir, settings.max_pending_jobs)
    st = ServerState(settings, engine, None, keys, job_queue, metrics, open_allowed)
    st.assistant = Assistant(engine, settings, retrievers=st.collection,
                             chooser=PlanChooser(settings, st.query_router, st.embed))
    st.files = FileStore(settings.files_dir)
    st.feedback = FeedbackStore(settings.home)
    st.fine_tuning = FineTuning(settings, st.files, engine.model_name, _base_dir(engine, settings))
    app.state.ragtune = st
    app.include_router(chat.router)
    app.include_router(responses.router)
    app.include_router(models.router)
    app.include_router(embeddings.router)
    app.include_router(collections.router)
    app.include_router(adapters.router)
    app.include_router(jobs.router)
    app.include_router(files.router)
    app.include_router(fine_tuning.router)
    app.include_router(vector_stores.router)
    app.include_router(route.router)
    app.include_router(feedback.router)
    app.include_router(synth.router)
    app.include_router(ui.router)  # the web page at /

    @app.exception_handler(RagtuneError)
    async def _ragtune_error(request: Request, exc: RagtuneError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, OverloadedError) else None
        message = scrub_paths(str(exc), settings.home)
        return JSONResponse(error_body(message, exc.kind, exc.status, exc.param), exc.status,
                            headers=headers)

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
        if app.state.ragtune.draining and request.url.path not in ALWAYS_OPEN:
            response = _shutting_down()
        else:
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
        """The generation backend answers (the in-process worker runs, or the vLLM server is
        reachable); 503 otherwise and while draining."""
        eng = state(request).engine
        ok = eng.ready()
        return JSONResponse({"status": "ready" if ok else "not ready", "model": eng.model_name,
                             "queue_depth": eng.queue_depth()}, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["ops"], response_class=Response, responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}},
              "description": "Prometheus text format"}})
    def prometheus(request: Request) -> Response:
        """Prometheus metrics (needs the admin scope when keys exist)."""
        principal(request)  # the ACCESS rule: admin
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    _check_access_table(app)
    return app


def _shutting_down() -> JSONResponse:
    return JSONResponse(error_body("the server is shutting down: retry on another replica or "
                                   "once it has restarted", "server_error", 503), 503,
                        headers={"Retry-After": "5", "Connection": "close"})


def with_limits(app: FastAPI, settings: Settings) -> Any:
    """The ASGI app to run: `app` behind the body-size cap."""
    return BodyLimit(app, int(settings.max_upload_mb * 2**20))


def _check_access_table(app: FastAPI) -> None:
    """Every route must have an explicit access rule in `auth.ACCESS`."""
    for route in app.routes:
        for method in getattr(route, "methods", None) or ():
            if method in ("HEAD", "OPTIONS"):
                continue
            if f"{method} {route_path(route)}" not in ACCESS and not route.path.startswith("/docs/"):
                raise RuntimeError(f"route {method} {route.path} has no access rule in auth.ACCESS")


def _base_dir(engine: Any, settings: Settings) -> Any:
    """The served base model's folder (or GGUF file): an ft: name may use its name."""

    from ragtune.platform.models import resolve_generator

    try:
        return resolve_generator(engine.model_name, settings)
    except RagtuneError:  # a model not imported yet (vLLM serves it): its name is its id
        return Path(str(engine.model_name))


def _version() -> str:
    from ragtune import __version__

    return __version__


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the API with uvicorn until SIGINT/SIGTERM, then drain: in-flight requests and streams
    get `GRACE_SECONDS` to finish, new ones are refused, then the engine stops."""
    app = create_app(settings, host=host)
    config = uvicorn.Config(with_limits(app, settings), host=host, port=port, log_level="info",
                            timeout_graceful_shutdown=GRACE_SECONDS)
    DrainingServer(config, app.state.ragtune).run()


class DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the app when a stop signal arrives. uvicorn closes its
    listening socket within a tick; a request accepted in between gets 503, not the model."""

    def __init__(self, config: uvicorn.Config, app_state: ServerState):
        super().__init__(config)
        self.app_state = app_state

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.app_state.draining = True
        super().handle_exit(sig, frame)
