"""The station's only door to the enrollment manager and the citizen lookup.

Every call the flow makes into :class:`~appliance.enrollment.session.EnrollmentManager` and
:class:`~appliance.citizen.lookup.LookupClient` is here. The manager takes a local
:class:`~appliance.capabilities.base.Job` per call (deadline, cancellation, progress): its
progress steps (the camera's ``guidance``, the sensor's ``waiting_for_finger``, ``lift``,
``quality``, ``retry``) go to the flow, i.e. to the screen; the session's own events go to the
fleet as for a remote session. The live preview is built here from the frames the portrait
capture shows (``on_frame``): downscaled JPEG, never stored, nothing after the capture.

Instant issuance goes through here too: the centre's issuance package (the
:class:`~appliance.station.issuance.IssuanceClient`, checked to be this enrollment's and this
citizen's) and the chip encoder's :class:`~appliance.capabilities.card.CardIssuer`.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..capabilities.base import Job
from ..capabilities.card_delivery import check_belongs
from ..capabilities.finger import ReferenceTemplate
from ..citizen.lookup import LookupClient
from ..enrollment.session import (
    CancelArgs,
    EnrollmentManager,
    FingerArgs,
    PortraitArgs,
    SkipArgs,
    StartArgs,
)
from ..errors import CommandError, DeviceError
from ..protocol.codes import ErrorCode

if TYPE_CHECKING:
    from ..capabilities.card import CardIssuer, EncodeResult
    from ..capabilities.portrait import Guidance
    from ..drivers.camera.interface import Frame
    from ..lds.package import IssuancePackage
    from .issuance import IssuanceClient

Listener = Callable[[str, Mapping[str, Any]], None]
PREVIEW_WIDTH = 320  # pixels: the preview is for aiming, never a usable portrait


def preview_jpeg(
    frame: Frame, width: int = PREVIEW_WIDTH, quality: int = 70
) -> tuple[bytes, int, int]:
    """``frame`` downscaled to at most ``width`` pixels wide, as JPEG (bytes, width, height)."""
    import cv2

    h, w = frame.image.shape[:2]
    scale = min(1.0, width / w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = (
        cv2.resize(frame.image, size, interpolation=cv2.INTER_AREA) if scale < 1 else frame.image
    )
    ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise CommandError("preview frame could not be encoded", code=ErrorCode.INTERNAL_ERROR)
    return buf.tobytes(), size[0], size[1]


class Backend:
    """Typed calls for the flow; listeners see the manager's events."""

    def __init__(
        self,
        *,
        manager: EnrollmentManager,
        lookup: LookupClient | None,
        cards: Callable[[], CardIssuer | None] = lambda: None,
        issuance: IssuanceClient | None = None,
        card_poll_s: float = 0.2,
    ) -> None:
        self.manager = manager
        self.lookup_client = lookup
        self._cards = cards  # the encoder comes up (or back) after the station: asked each time
        self.issuance = issuance
        self.card_poll_s = card_poll_s
        self._listeners: list[Listener] = []
        self._job: Job | None = None  # the capture under way, if any
        # The manager's events (started, record_sealed, cancelled by the fleet...) reach the
        # flow too: it follows a session the fleet cancels while the screen shows it.
        fleet_emit = manager.emit

        def tee(type_: str, data: dict[str, Any], **kw: Any) -> object:
            out = fleet_emit(type_, data, **kw)
            for fn in list(self._listeners):
                fn(type_, data)
            return out

        manager.emit = tee

    def add_listener(self, fn: Listener) -> None:
        self._listeners.append(fn)

    def _job_for(self, timeout_s: float, progress: Listener | None = None) -> Job:
        job = Job.local(timeout_s, progress=progress)
        self._job = job
        return job

    def abort(self) -> None:
        """Ask the running capture (if any) to stop at its next safe point."""
        job = self._job
        if job is not None:
            job.cancelled.set()

    # -- calls ------------------------------------------------------------------------------

    def lookup(self, number: str, timeout_s: float = 10.0) -> dict[str, Any]:
        if self.lookup_client is None:
            raise CommandError("citizen lookup unavailable", code=ErrorCode.DIRECTORY_OFFLINE)
        return self.lookup_client.lookup(number, timeout_s=timeout_s).to_dict()

    def start(
        self,
        citizen_ref: str,
        corrections: list[dict[str, Any]],
        issuance: bool,
        officer: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Open the session; ``officer`` (attended mode: the signed-in officer's ``id`` and
        ``name``) is recorded in the signed package."""
        operator = (
            None if officer is None else {"officer_id": officer["id"], "name": officer["name"]}
        )
        args = StartArgs.model_validate(
            {
                "citizen_ref": citizen_ref,
                "corrections": corrections,
                "issuance": issuance,
                "operator": operator,
            }
        )
        return self.manager.start(args, job=self._job_for(10))

    def portrait(
        self, on_progress: Listener, on_preview: Listener, timeout_s: float = 30.0
    ) -> dict[str, Any]:
        """The portrait; ``on_preview("preview", {...})`` per frame the camera delivers while it
        runs (the analysed ones with their ``guidance``)."""
        live = threading.Event()
        live.set()

        def on_frame(frame: Frame, guidance: Guidance | None) -> None:
            if not live.is_set():
                return  # the capture is over: no frame after it
            jpeg, w, h = preview_jpeg(frame)
            # The frame's wall-clock time (its timestamp is time.monotonic()).
            frame_at = time.time() - (time.monotonic() - frame.timestamp)
            message: dict[str, Any] = {
                "jpeg": base64.b64encode(jpeg).decode(),
                "width": w,
                "height": h,
                "frame_at": frame_at,
            }
            if guidance is not None:  # an analysed frame; the others keep the last face box
                message["guidance"] = guidance.to_dict()
            on_preview("preview", message)

        try:
            return self.manager.portrait(
                PortraitArgs(timeout_s=timeout_s),
                job=self._job_for(timeout_s + 30, on_progress),
                on_frame=on_frame,
            )
        finally:
            live.clear()

    def finger(
        self,
        position: int,
        on_progress: Listener,
        timeout_s: float = 40.0,
        refuse: Sequence[ReferenceTemplate] = (),
    ) -> dict[str, Any]:
        """One finger; one matching a template of ``refuse`` (the signed-in officer's) is
        refused (``officer_finger``) and stays to do. ``refuse`` is wiped afterwards."""
        args = FingerArgs(position=position, timeout_s=timeout_s)
        try:
            return self.manager.finger(
                args, job=self._job_for(timeout_s + 110, on_progress), refuse_matching=refuse
            )
        finally:
            for ref in refuse:
                ref.wipe()

    def skip(self, position: int, reason: str, detail: str) -> dict[str, Any]:
        args = SkipArgs.model_validate({"position": position, "reason": reason, "detail": detail})
        return self.manager.skip(args, job=self._job_for(10))

    def review(self) -> dict[str, Any]:
        return self.manager.review(job=Job.local(10))

    def finish(self) -> dict[str, Any]:
        return self.manager.finish(job=self._job_for(60))

    def cancel(self, reason: str) -> dict[str, Any]:
        return self.manager.cancel(CancelArgs(reason=reason), job=Job.local(30))

    def active_session(self) -> str | None:
        s = self.manager.active()
        return None if s is None else s.id

    # -- instant issuance ---------------------------------------------------------------------

    def issuance_available(self) -> bool:
        """The kiosk can offer a card: it asks the centre and has an encoder configured."""
        return self.issuance is not None and self._cards() is not None

    def _issuer(self) -> CardIssuer:
        cards = self._cards()
        if cards is None:
            raise DeviceError(
                "no card encoder on this kiosk", device="card", code=ErrorCode.DEVICE_NOT_READY
            )
        return cards

    def card_package(
        self, enrollment: str, citizen_ref: str, personal_id: str, timeout_s: float
    ) -> IssuancePackage:
        """The centre's signed issuance package for ``enrollment``, once it is verified to be
        this enrollment's and this citizen's (``issuance_mismatch`` otherwise)."""
        if self.issuance is None:
            raise CommandError("card issuance unavailable", code=ErrorCode.ISSUANCE_DISABLED)
        job = self._job_for(timeout_s)
        answer = self.issuance.wait(enrollment, timeout_s=timeout_s, cancelled=job.cancelled)
        return check_belongs(
            answer, enrollment=enrollment, citizen_ref=citizen_ref, personal_id=personal_id
        )

    def wait_card(self, timeout_s: float) -> None:
        """Until a card is in the reader (no card I/O: the reader's monitor says so);
        ``no_card`` after ``timeout_s``."""
        issuer = self._issuer()
        job = self._job_for(timeout_s)
        while not issuer.status().get("card_present"):
            if job.cancelled.wait(self.card_poll_s):
                raise CommandError("the card step was cancelled", code=ErrorCode.CANCELLED)
            if job.remaining <= 0:
                raise DeviceError(
                    f"no card inserted in {timeout_s:.0f} s",
                    device="card",
                    code=ErrorCode.NO_CARD,
                    retryable=True,
                )

    def card_encode(
        self, package: IssuancePackage, on_step: Callable[[str], None], timeout_s: float = 120.0
    ) -> EncodeResult:
        """Write, lock and verify the card (:meth:`CardIssuer.encode`); ``on_step`` gets the
        encoder's steps (``check_package``, ``write:DG2``, ``lock``, ``verify:read``...)."""
        issuer = self._issuer()
        job = self._job_for(timeout_s, lambda step, _data: on_step(step))
        return issuer.encode(job, package)
