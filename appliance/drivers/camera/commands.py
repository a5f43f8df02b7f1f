"""Camera commands: ``camera.capture``, ``camera.status``, ``camera.snapshot``.

The daemon wires them with ``register(registry, device, store=..., enrollment_active=...)``:

- ``store``: the :class:`~appliance.drivers.camera.records.PortraitStore` shared with the
  enrollment flow (it takes the record for DG2 by ``record_id``); one is made if omitted.
- ``enrollment_active``: a callable answering whether an enrollment session is active;
  ``camera.snapshot`` refuses while it is. Without it, the daemon's
  ``services.session_active()`` (reached through the command context) and the device's
  ``enrollment_active`` flag are used.

The store is also published in the daemon's ``services.extras["camera.portraits"]`` on the
first capture or status, so the plain ``register(registry, device)`` works end to end.

Replies carry scores, reasons, sizes and a SHA-256 digest, never portrait pixels. The
technician's snapshot is the one exception by design: a low-resolution JPEG (``snapshot_width``
pixels wide) to aim the camera, refused during an enrollment.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ...commands import CommandContext, CommandRegistry, NoArgs
from ...errors import Busy
from .interface import Camera
from .records import PortraitStore

# camera.capture's timeout_s may be up to this; the command's own timeout adds a margin for
# encoding and the reply.
MAX_CAPTURE_S = 120.0
# Key of the portrait store in the daemon's Services.extras.
EXTRAS_KEY = "camera.portraits"


class CaptureArgs(BaseModel):
    """Arguments of ``camera.capture``."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(
        20.0, gt=0, le=MAX_CAPTURE_S, description="Give up (with the best frame) after this"
    )
    min_quality: int | None = Field(
        None,
        ge=0,
        le=100,
        description="Overall score (the weakest component) that ends the capture early; "
        "default: the configuration's default_min_quality",
    )


class SnapshotArgs(BaseModel):
    """Arguments of ``camera.snapshot``."""

    model_config = ConfigDict(extra="forbid")

    width: int | None = Field(
        None, ge=80, le=640, description="Image width; never above snapshot_width"
    )
    assess: bool = Field(True, description="Also report the quality components of the frame")


def _jpeg2000_available() -> bool:
    from .autocapture import jpeg2000_available

    return jpeg2000_available()


def register(
    registry: CommandRegistry,
    device: Camera,
    *,
    store: PortraitStore | None = None,
    enrollment_active: Callable[[], bool] | None = None,
) -> None:
    """Add the camera commands to ``registry`` for ``device``."""
    config = device.config
    portraits = (
        store if store is not None else PortraitStore(config.records_kept, config.record_ttl_s)
    )
    capture_lock = threading.Lock()

    def enrolling(ctx: CommandContext) -> bool:
        if enrollment_active is not None:
            return bool(enrollment_active())
        # The daemon's Services carries session_active(); the dispatcher uses the same.
        session_active = getattr(ctx.services, "session_active", None)
        if callable(session_active) and session_active():
            return True
        return bool(getattr(device, "enrollment_active", False))

    def share_store(ctx: CommandContext) -> None:
        # Services.extras holds capability-owned state: the enrollment flow finds the
        # portraits under "camera.portraits" even when register() was given no store.
        extras = getattr(ctx.services, "extras", None)
        if isinstance(extras, dict):
            extras.setdefault(EXTRAS_KEY, portraits)

    def capture(ctx: CommandContext, args: CaptureArgs) -> dict[str, Any]:
        """Auto-capture an ICAO portrait; guidance events while it runs; best frame kept."""
        if not capture_lock.acquire(blocking=False):
            raise Busy("a camera capture is already running", details={"command": ctx.name})
        try:
            min_quality = (
                config.default_min_quality if args.min_quality is None else args.min_quality
            )
            # Leave a little of the command's deadline for encoding and the reply.
            budget = min(args.timeout_s, max(0.0, ctx.remaining - 1.0))

            def guide(payload: dict[str, Any]) -> None:
                ctx.emit(
                    "camera.guidance", {"command_id": ctx.command_id, **payload}, durable=False
                )

            from .autocapture import auto_capture  # OpenCV and Pillow load on first use

            outcome = auto_capture(
                device,
                timeout_s=budget,
                min_quality=min_quality,
                guidance=guide,
                cancelled=ctx.cancelled,
            )
            portraits.put(outcome.portrait)
            share_store(ctx)
            quality = outcome.report.to_dict()
            quality.pop("eyes", None)
            return {
                **outcome.portrait.describe(),
                "min_quality": min_quality,
                "frames": outcome.frames,
                "elapsed_s": round(outcome.elapsed_s, 3),
                "quality": quality,
            }
        finally:
            capture_lock.release()

    def status(ctx: CommandContext, args: NoArgs) -> dict[str, Any]:
        """Camera health, backend, counters and the portraits held in memory."""
        share_store(ctx)
        health = device.health()
        return {
            "health": health.model_dump(),
            "backend": config.backend,
            "resolution": {"width": config.width, "height": config.height},
            "stats": device.stats(),
            "capturing": capture_lock.locked(),
            "enrollment_active": enrolling(ctx),
            "jpeg2000": bool(config.jpeg2000 and _jpeg2000_available()),
            "portraits": portraits.describe(),
        }

    def snapshot(ctx: CommandContext, args: SnapshotArgs) -> dict[str, Any]:
        """Technician's low-resolution frame to aim the camera; refused during enrollment."""
        if enrolling(ctx):
            raise Busy(
                "camera.snapshot is refused while an enrollment is active",
                details={"reason": "enrollment_active"},
            )
        if capture_lock.locked():
            raise Busy(
                "camera.snapshot is refused while a capture runs", details={"reason": "capturing"}
            )
        frame = device.read(timeout_s=min(config.read_timeout_s, ctx.remaining))
        width = min(args.width or config.snapshot_width, config.snapshot_width)
        h, w = frame.image.shape[:2]
        height = max(1, round(h * width / w))
        import cv2
        import numpy as np

        from .autocapture import encode_jpeg
        from .quality import assess

        small = np.asarray(
            cv2.resize(frame.image, (width, height), interpolation=cv2.INTER_AREA), dtype=np.uint8
        )
        reply: dict[str, Any] = {
            "width": width,
            "height": height,
            "source": {"width": w, "height": h},
            "jpeg_base64": base64.b64encode(encode_jpeg(small, 75)).decode("ascii"),
        }
        if args.assess:
            report = assess(frame.image, config.quality).to_dict()
            report.pop("eyes", None)
            reply["quality"] = report
        return reply

    registry.add(
        "camera.capture",
        capture,
        args=CaptureArgs,
        timeout_s=MAX_CAPTURE_S + 10.0,
        role="operator",
    )
    registry.add("camera.status", status, timeout_s=5.0, role="operator")
    registry.add(
        "camera.snapshot",
        snapshot,
        args=SnapshotArgs,
        timeout_s=10.0,
        role="technician",
        intrusive=True,
        unstored=("jpeg_base64",),  # the picture goes to the technician, never to disk
    )
