"""The local API's guard and the officers' credentials, without a daemon: a peer that is not
local is refused even when the server is (mis)bound to every address; expired or wrong
credentials are refused naming the field; the configuration refuses a non-loopback bind."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, cast

import pytest

from appliance.config import StationSection, validate
from appliance.enrollment.session import EnrollmentManager
from appliance.errors import ConfigError
from appliance.station.api import LocalApi, create_app, is_local_peer
from appliance.station.backend import Backend
from appliance.station.flow import Flow
from appliance.station.officers import OfficerRefused, authenticate, hash_secret
from appliance.store import Store
from appliance.trust.keys import DeviceIdentity

TOKEN = "t0k3n"


def _call(app: Any, client: tuple[str, int] | None, headers: list[tuple[bytes, bytes]]) -> int:
    """One ASGI request to ``app`` as if from ``client``; the response status."""
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/v1/openapi.json",
        "raw_path": b"/v1/openapi.json",
        "query_string": b"",
        "headers": headers,
        "client": client,
        "server": ("127.0.0.1", 8470),
        "scheme": "http",
        "http_version": "1.1",
        "root_path": "",
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return int(sent[0]["status"])


def test_guard_checks_the_peer_and_the_token_on_every_request() -> None:
    app = create_app(cast(Any, None), TOKEN)  # the guard answers before any route runs
    ok = [(b"x-screen-token", TOKEN.encode())]
    assert _call(app, ("127.0.0.1", 5000), ok) == 200
    assert _call(app, ("::1", 5000), ok) == 200
    assert _call(app, None, ok) == 200  # a UNIX socket
    assert _call(app, ("192.0.2.7", 5000), ok) == 403
    assert _call(app, ("::ffff:10.0.0.5", 5000), ok) == 403
    assert _call(app, ("127.0.0.1", 5000), []) == 401
    assert _call(app, ("127.0.0.1", 5000), [(b"cookie", b"screen_token=old")]) == 401
    # a reopened screen carries the last boot's cookie and the new boot's token
    both = [(b"cookie", b"screen_token=old"), (b"x-screen-token", TOKEN.encode())]
    assert _call(app, ("127.0.0.1", 5000), both) == 200
    assert not is_local_peer(("localhost-but-not-an-address", 1))


def _own_address() -> str | None:
    """An address of this machine that is not loopback (none: the test says so)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: only picks the outgoing interface
            addr = str(s.getsockname()[0])
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def test_a_server_bound_to_every_address_still_refuses_a_non_local_client() -> None:
    addr = _own_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback address to connect from")
    api = LocalApi(cast(Any, None), TOKEN, bind="0.0.0.0", port=0).start()
    try:
        req = urllib.request.Request(f"http://{addr}:{api.port}/v1/openapi.json")
        req.add_header("X-Screen-Token", TOKEN)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=10)
        assert refused.value.code == 403
        assert json.loads(refused.value.read())["error"]["code"] == "forbidden_peer"
        local = urllib.request.Request(f"http://127.0.0.1:{api.port}/v1/openapi.json")
        local.add_header("X-Screen-Token", TOKEN)
        with urllib.request.urlopen(local, timeout=10) as r:
            assert "/v1/lookup" in json.loads(r.read())["paths"]
    finally:
        api.stop()


def test_configuration_binds_the_local_api_to_loopback_only() -> None:
    with pytest.raises(ConfigError) as bad:
        validate({"station": {"bind": "0.0.0.0"}})
    assert any(p.startswith("station.bind") for p, _ in bad.value.problems)
    assert validate({"station": {"bind": "unix:/run/appliance/screen.sock"}}).station.bind


def _entries(expires: float) -> list[Any]:
    cfg = validate(
        {
            "station": {
                "officers": [
                    {
                        "id": "a",
                        "name": "A",
                        "secret_hash": hash_secret("1234"),
                        "expires": expires,
                    },
                    {
                        "id": "s",
                        "name": "S",
                        "secret_hash": hash_secret("9876"),
                        "expires": expires,
                        "supervisor": True,
                    },
                ]
            }
        }
    )
    return list(cfg.station.officers)


def test_officers_work_offline_until_their_credential_expires() -> None:
    now = time.time()
    entries = _entries(now + 60)
    assert authenticate(entries, "a", "1234", now=now).name == "A"
    with pytest.raises(OfficerRefused) as wrong:
        authenticate(entries, "a", "0000", now=now)
    assert wrong.value.code == "officer_refused" and wrong.value.details["field"] == "secret"
    with pytest.raises(OfficerRefused) as unknown:
        authenticate(entries, "nobody", "1234", now=now)
    assert unknown.value.code == "officer_refused"
    with pytest.raises(OfficerRefused) as expired:
        authenticate(entries, "a", "1234", now=now + 61)
    assert expired.value.code == "officer_expired"
    with pytest.raises(OfficerRefused) as not_sup:
        authenticate(entries, "a", "1234", supervisor=True, now=now)
    assert not_sup.value.code == "supervisor_required"
    assert authenticate(entries, "s", "9876", supervisor=True, now=now).supervisor
    shown = validate({"station": {"officers": [e.model_dump() for e in entries]}}).redacted()
    assert all(o["secret_hash"] == "<redacted>" for o in shown["station"]["officers"])


def test_stopping_the_api_ends_open_event_streams_cleanly(tmp_path: Path) -> None:
    """A screen's open stream gets a proper end when the daemon stops (not a cut connection),
    so the server thread is gone when stop() returns."""
    store = Store(tmp_path / "state")
    manager = EnrollmentManager(
        store=store,
        state_dir=tmp_path / "state",
        device_id="kiosk-api",
        identity=DeviceIdentity.load_or_create(tmp_path / "state"),
        portraits=None,
        fingers=None,
        enrollment_key=None,
        emit=lambda *_a, **_kw: None,
        resume_s=600,
        on_package=lambda _pid: None,
    )
    flow = Flow(
        store=store,
        backend=Backend(manager=manager, lookup=None),
        config=StationSection(),
        emit=lambda *_a, **_kw: None,
    )
    api = LocalApi(flow, TOKEN, bind="127.0.0.1", port=0).start()
    outcome: list[object] = []
    first = threading.Event()

    def read() -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{api.port}/v1/events")
        req.add_header("X-Screen-Token", TOKEN)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                r.readline()
                first.set()
                outcome.append(r.read())  # to the end of the stream
        except Exception as exc:
            outcome.append(exc)
        first.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert first.wait(15)
    api.stop()
    reader.join(15)
    assert not api.thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], bytes), outcome
    flow.stop()
    store.close()
