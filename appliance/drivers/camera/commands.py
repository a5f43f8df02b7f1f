"""Camera commands: ``camera.capture``, ``camera.status``, ``camera.snapshot``.

The handlers are thin adapters over :class:`~appliance.capabilities.PortraitCapture` (the
auto-capture loop with guidance). The daemon wires them with
``register(registry, device, capture=..., enrollment_active=...)``:

- ``capture``: the portrait service shared with the enrollment session (one capture at a time
  across both); one is made if omitted.
- ``store``: the :class:`~appliance.drivers.camera.records.PortraitStore` that keeps what
  ``camera.capture`` captured, by ``record_id``, for ``camera.status``; one is made if omitted.
  (The enrollment session does not use it: a capture's result carries its record.)
- ``enrollment_active``: a callable answering whether an enrollment session is active;
  ``camera.snapshot`` refuses while it is. Without it, the device's ``enrollment_active`` flag
  is used.

Replies carry scores, reasons, sizes and a SHA-256 digest, never portrait pixels. The
technician's snapshot is the one exception by design: a low-resolution JPEG (``snapshot_width``
pixels wide) to aim the camera, refused during an enrollment.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ...capabilities.base import Job
from ...capabilities.portrait import MAX_CAPTURE_S, PortraitCapture
from ...commands import CommandContext, CommandRegistry, NoArgs
from ...errors import Busy
from .interface import Camera
from .records import PortraitStore

__all__ = ["MAX_CAPTURE_S", "CaptureArgs", "SnapshotArgs", "register"]


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
    capture: PortraitCapture | None = None,
) -> None:
    """Add the camera commands to ``registry`` for ``device``."""
    config = device.config
    portraits = (
        store if store is not None else PortraitStore(config.records_kept, config.record_ttl_s)
    )
    service = capture if capture is not None else PortraitCapture(device)

    def enrolling() -> bool:
        if enrollment_active is not None:
            return bool(enrollment_active())
        return bool(getattr(device, "enrollment_active", False))

    def capture_cmd(ctx: CommandContext, args: CaptureArgs) -> dict[str, Any]:
        """Auto-capture an ICAO portrait; guidance events while it runs; best frame kept."""
        result = service.capture(
            Job.from_context(ctx), min_quality=args.min_quality, timeout_s=args.timeout_s
        )
        try:
            portraits.put(result.to_portrait())
            return {
                **result.describe(),
                "min_quality": result.min_quality,
                "frames": result.frames,
                "elapsed_s": result.elapsed_s,
                "quality": result.quality,
            }
        finally:
            result.wipe()

    def status(ctx: CommandContext, args: NoArgs) -> dict[str, Any]:
        """Camera health, backend, counters and the portraits held in memory."""
        health = device.health()
        return {
            "health": health.model_dump(),
            "backend": config.backend,
            "resolution": {"width": config.width, "height": config.height},
            "stats": device.stats(),
            "capturing": service.busy,
            "enrollment_active": enrolling(),
            "jpeg2000": bool(config.jpeg2000 and _jpeg2000_available()),
            "portraits": portraits.describe(),
        }

    def snapshot(ctx: CommandContext, args: SnapshotArgs) -> dict[str, Any]:
        """Technician's low-resolution frame to aim the camera; refused during enrollment."""
        if enrolling():
            raise Busy(
                "camera.snapshot is refused while an enrollment is active",
                details={"reason": "enrollment_active"},
            )
        if service.busy:
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
        capture_cmd,
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
