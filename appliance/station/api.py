"""The station's local API and reference screen (docs/local-api.md).

FastAPI on uvicorn, in a thread of the daemon: ``/v1/...`` actions (POST, JSON in, the flow's
state out), ``/v1/state``, ``/v1/events`` (server-sent events: state, guidance, progress,
preview), ``/v1/receipt.svg`` (the receipt's QR code) and the static screen at ``/``.

Who may call it: every request is checked, whatever the bind address says, for

1. a loopback peer (127.0.0.0/8, ::1) or a UNIX socket: anything else is ``forbidden_peer``;
2. the per-boot screen token (random, ``<state dir>/screen-token``, mode 0600), in the
   ``X-Screen-Token`` header, the ``screen_token`` cookie (set when the screen is opened as
   ``/?token=...``) or a ``token`` query parameter: without it, ``screen_token_required``.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route functions' annotations
# (Request, Response, the body models) at definition time, inside create_app.
import asyncio
import contextlib
import hmac
import io
import ipaddress
import json
import logging
import secrets
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ApplianceError
from ..protocol.codes import ErrorCode
from ..trust.keys import atomic_write
from .flow import Flow, StationError

log = logging.getLogger(__name__)

API_VERSION = "v1"
TOKEN_FILE = "screen-token"  # noqa: S105 - a file name
COOKIE = "screen_token"
STATIC = Path(__file__).parent / "static"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# --- request bodies (their JSON schemas are in docs/schemas/station/) --------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LanguageBody(_Body):
    language: Literal["vi", "en"] = Field(description="Screen language")


class SignInBody(_Body):
    officer_id: str = Field(min_length=1, max_length=64, description="Officer id")
    secret: str = Field(min_length=1, max_length=128, description="Password or PIN")


class LookupBody(_Body):
    number: str = Field(
        pattern=r"^([0-9]{12}|[0-9]{9})$", description="12-digit CCCD or 9-digit CMND number"
    )


class CorrectionBody(_Body):
    field: str = Field(min_length=1, max_length=40, description="Field of the record")
    requested: str = Field(max_length=200, description="The value the citizen asks for")


class ConfirmBody(_Body):
    corrections: list[CorrectionBody] = Field(
        default_factory=list, max_length=12, description="Corrections the citizen asks for"
    )


class ConsentBody(_Body):
    accepted: bool = Field(description="The citizen consents to the capture")
    issuance: bool = Field(False, description="Instant card issuance after the enrollment")


class SkipBody(_Body):
    position: int = Field(ge=1, le=10, description="ISO/IEC 19794-4 finger position")
    reason: Literal["missing", "bandaged", "unreadable", "other"] = Field(description="Why")
    supervisor_id: str = Field(min_length=1, max_length=64, description="Approving supervisor")
    secret: str = Field(min_length=1, max_length=128, description="The supervisor's secret")


class CancelBody(_Body):
    reason: str = Field("cancelled at the station", max_length=200, description="Why")


class Empty(_Body):
    pass


BODIES: dict[str, type[BaseModel]] = {
    "language": LanguageBody,
    "begin": Empty,
    "sign-in": SignInBody,
    "sign-out": Empty,
    "lookup": LookupBody,
    "confirm": ConfirmBody,
    "back": Empty,
    "consent": ConsentBody,
    "portrait": Empty,
    "finger": Empty,
    "skip": SkipBody,
    "submit": Empty,
    "done": Empty,
    "cancel": CancelBody,
    "card-retry": Empty,
    "card-done": Empty,
}


# --- the guard ---------------------------------------------------------------------------------


def is_local_peer(client: Any) -> bool:
    """A loopback address, or no address at all (a UNIX socket)."""
    if not client or not client[0]:
        return True
    host = str(client[0])
    try:
        addr = ipaddress.ip_address(host.split("%", maxsplit=1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _tokens_of(scope: Scope) -> list[str]:
    """Every token the request presents: header, cookie, query. A screen reopened with a new
    boot's ``?token=`` still carries the last boot's cookie, so any of them may match."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    found: list[str] = []
    if "x-screen-token" in headers:
        found.append(str(headers["x-screen-token"]))
    if "cookie" in headers:
        cookie: SimpleCookie = SimpleCookie()
        with contextlib.suppress(Exception):
            cookie.load(headers["cookie"])
        if COOKIE in cookie:
            found.append(str(cookie[COOKIE].value))
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    found.extend(str(v) for v in query.get("token", []))
    return found


class Guard:
    """Pure ASGI middleware: loopback peers with the screen token only, on every request."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if not is_local_peer(scope.get("client")):
            log.warning("station: refused a request from %s", scope.get("client"))
            await _deny(
                send, 403, ErrorCode.FORBIDDEN_PEER, "the local API answers loopback peers only"
            )
            return
        want = self.token.encode()
        if not any(hmac.compare_digest(t.encode(), want) for t in _tokens_of(scope)):
            await _deny(send, 401, ErrorCode.SCREEN_TOKEN_REQUIRED, "missing or wrong screen token")
            return
        await self.app(scope, receive, send)


async def _deny(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message, "details": {}}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"cache-control", b"no-store")],
        }
    )
    await send({"type": "http.response.body", "body": body})


# --- the application -------------------------------------------------------------------------


def _status_of(exc: ApplianceError) -> int:
    if exc.code in (
        ErrorCode.OFFICER_REFUSED,
        ErrorCode.OFFICER_EXPIRED,
        ErrorCode.SUPERVISOR_REQUIRED,
    ):
        return 403
    if exc.code in (ErrorCode.INVALID_ARGS, ErrorCode.CITIZEN_INVALID):
        return 400
    return 409


def create_app(flow: Flow, token: str) -> Any:  # noqa: C901 - one closure per route
    """The ASGI application: FastAPI routes behind the :class:`Guard`."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

    app = FastAPI(
        title="appliance station local API",
        version=API_VERSION,
        docs_url=None,
        redoc_url=None,
        openapi_url=f"/{API_VERSION}/openapi.json",
    )

    @app.exception_handler(ApplianceError)
    async def appliance_error(_request: Request, exc: ApplianceError) -> JSONResponse:
        return JSONResponse({"error": exc.to_dict()}, status_code=_status_of(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # Bad input names the field, in the project's error shape (invalid_args).
        problems = [
            (".".join(str(p) for p in e["loc"][1:]) or "body", str(e["msg"])) for e in exc.errors()
        ]
        error = {
            "code": ErrorCode.INVALID_ARGS,
            "message": "; ".join(f"{f}: {m}" for f, m in problems),
            "details": {"field": problems[0][0] if problems else "body"},
        }
        return JSONResponse({"error": error}, status_code=400)

    actions: dict[str, Callable[[Any], dict[str, Any]]] = {
        "language": lambda b: flow.set_language(b.language),
        "begin": lambda _b: flow.begin(),
        "sign-in": lambda b: flow.sign_in(b.officer_id, b.secret),
        "sign-out": lambda _b: flow.sign_out(),
        "lookup": lambda b: flow.lookup(b.number),
        "confirm": lambda b: flow.confirm([c.model_dump() for c in b.corrections]),
        "back": lambda _b: flow.back(),
        "consent": lambda b: flow.consent(b.accepted, b.issuance),
        "portrait": lambda _b: flow.capture_portrait(),
        "finger": lambda _b: flow.capture_finger(),
        "skip": lambda b: flow.skip_finger(b.position, b.reason, b.supervisor_id, b.secret),
        "submit": lambda _b: flow.submit(),
        "done": lambda _b: flow.done(),
        "cancel": lambda b: flow.cancel(b.reason),
        "card-retry": lambda _b: flow.card_retry(),
        "card-done": lambda _b: flow.card_done(),
    }

    def route(name: str, model: type[BaseModel]) -> None:
        handler = actions[name]

        def action(body: Any) -> dict[str, Any]:
            return handler(body)

        # The body's model by object: FastAPI reads it for validation and the OpenAPI schema.
        action.__annotations__ = {"body": model, "return": dict[str, Any]}
        action.__name__ = "action_" + name.replace("-", "_")
        app.post(f"/{API_VERSION}/{name}", summary=f"action {name}")(action)

    for name, model in BODIES.items():
        route(name, model)

    @app.get(f"/{API_VERSION}/state")
    def state() -> dict[str, Any]:
        return flow.snapshot()

    @app.get(f"/{API_VERSION}/receipt.svg")
    def receipt() -> Response:
        snap = flow.snapshot()
        if snap["receipt"] is None:
            raise StationError("no receipt to show", code=ErrorCode.NO_RECEIPT)
        import segno

        buf = io.BytesIO()
        segno.make(snap["receipt"]["reference"], error="m").save(buf, kind="svg", scale=6)
        return Response(
            buf.getvalue(), media_type="image/svg+xml", headers={"cache-control": "no-store"}
        )

    @app.get(f"/{API_VERSION}/events")
    async def events(request: Request) -> StreamingResponse:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=512)

        def put(msg: dict[str, Any]) -> None:
            if queue.full():  # a stalled screen loses old messages, never blocks the flow
                queue.get_nowait()
            queue.put_nowait(msg)

        def push(msg: dict[str, Any]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(put, msg)

        unsubscribe = flow.subscribe(push)

        async def stream() -> AsyncIterator[str]:
            try:
                first = {"type": "state", "state": flow.snapshot()}
                yield f"event: state\ndata: {json.dumps(first, ensure_ascii=False)}\n\n"
                while not await request.is_disconnected():
                    try:
                        msg = await asyncio.wait_for(queue.get(), 10)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if msg["type"] == "bye":  # the daemon stops: end the stream now
                        return
                    data = json.dumps(msg, ensure_ascii=False)
                    yield f"event: {msg['type']}\ndata: {data}\n\n"
            finally:
                unsubscribe()

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"cache-control": "no-store"}
        )

    @app.get("/")
    def index(request: Request) -> Response:
        response = FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})
        if "token" in request.query_params:
            response.set_cookie(
                COOKIE, request.query_params["token"], httponly=True, samesite="strict"
            )
        return response

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            return JSONResponse(
                {"error": {"code": ErrorCode.NOT_FOUND, "message": name, "details": {}}},
                status_code=404,
            )
        return FileResponse(path, headers={"cache-control": "no-store"})

    return Guard(app, token)


# --- the server ----------------------------------------------------------------------------------


def new_token(state_dir: Path) -> str:
    """A fresh per-boot screen token, written 0600 to ``<state dir>/screen-token``."""
    token = secrets.token_urlsafe(32)
    atomic_write(state_dir / TOKEN_FILE, token.encode(), mode=0o600)
    return token


class LocalApi:
    """uvicorn serving :func:`create_app` in a daemon thread (``host`` or ``unix:path``)."""

    def __init__(self, flow: Flow, token: str, *, bind: str, port: int) -> None:
        import uvicorn

        kw: dict[str, Any] = (
            {"uds": bind[len("unix:") :]}
            if bind.startswith("unix:")
            else {"host": bind, "port": port}
        )
        self.config = uvicorn.Config(
            create_app(flow, token),
            log_level="warning",
            lifespan="off",
            access_log=False,
            ws="none",
            timeout_graceful_shutdown=3,
            **kw,
        )
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="station-api", daemon=True)
        self.bind = bind
        self.flow = flow

    def start(self, timeout: float = 10.0) -> "LocalApi":
        self.thread.start()
        for _ in range(int(timeout / 0.05)):
            if self.server.started or not self.thread.is_alive():
                break
            threading.Event().wait(0.05)
        if not self.server.started:
            raise ApplianceError(f"the station's local API did not start on {self.bind}")
        log.info("station: local API on %s", self.url)
        return self

    @property
    def port(self) -> int:
        for server in self.server.servers:
            for sock in server.sockets:
                name = sock.getsockname()
                if isinstance(name, tuple):
                    return int(name[1])
        return 0

    @property
    def url(self) -> str:
        if self.bind.startswith("unix:"):
            return self.bind
        host = f"[{self.config.host}]" if ":" in str(self.config.host) else self.config.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        if self.flow is not None:
            self.flow.broadcast({"type": "bye"})  # open event streams end, so the server can
        self.thread.join(timeout=10)
