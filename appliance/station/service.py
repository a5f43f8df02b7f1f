"""Starting and stopping the station inside the daemon (``station.enabled``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..capabilities.card import CardIssuer
from ..citizen.lookup import LookupClient
from ..config import StationSection
from ..enrollment.session import EnrollmentManager
from ..store import Store
from .issuance import IssuanceClient

log = logging.getLogger(__name__)


def start(
    config: StationSection,
    *,
    store: Store,
    emit: Callable[..., object],
    manager: EnrollmentManager,
    lookup: LookupClient | None,
    state_dir: Path,
    cards: Callable[[], CardIssuer | None] = lambda: None,
    issuance: IssuanceClient | None = None,
    instant_issuance: bool = False,
) -> Callable[[], None]:
    """Build the flow on the daemon's enrollment manager and lookup client (and, for instant
    issuance, the chip encoder and the client that asks the centre for the package), serve
    the local API, and return the function that stops both."""
    from .api import LocalApi, new_token
    from .backend import Backend
    from .flow import Flow

    backend = Backend(manager=manager, lookup=lookup, cards=cards, issuance=issuance)
    flow = Flow(
        store=store,
        backend=backend,
        config=config,
        emit=emit,
        instant_issuance=instant_issuance,
    )
    token = new_token(state_dir)
    api = LocalApi(flow, token, bind=config.bind, port=config.port).start()
    flow.start()
    # The announced state after a restart: the screen comes back where it was.
    flow.emit("station.state", {**_brief(flow.snapshot()), "restored": True})

    def stop() -> None:
        api.stop()
        flow.stop()

    return stop


def _brief(snap: dict[str, Any]) -> dict[str, Any]:
    keys = ("screen", "session_id", "busy", "notice", "current_finger")
    return {k: snap[k] for k in keys}
