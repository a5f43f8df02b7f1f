"""JSON Schemas of the station's local API (docs/local-api.md), generated with the protocol's
(``appliance schemas``, docs/schemas/local-api.*.json; a test keeps them current)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .api import BODIES


class FingerStatus(BaseModel):
    position: int = Field(ge=1, le=10, description="ISO/IEC 19794-4 finger position")
    status: Literal["todo", "captured", "skipped", "exception"]
    quality: int | None = Field(None, description="NFIQ 2-style score when captured")
    reason: str | None = Field(None, description="missing, bandaged... when skipped")
    attempts: int | None = None


class ErrorBody(BaseModel):
    code: str = Field(description="docs/protocol.md error code or a station code")
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class CardState(BaseModel):
    """The ``card`` screen (instant issuance): the step and its outcome."""

    model_config = ConfigDict(extra="forbid")

    step: Literal["waiting_data", "insert_card", "writing", "issued", "failed"]
    enrollment: str = Field(description="The package id of the enrollment the card is for")
    citizen_ref: str | None = Field(description="Checked against the centre's package")
    personal_id: str | None = Field(description="Checked against DG1 and DG13 (kept until done)")
    attempt: int = Field(ge=1, description="Blank cards tried for this enrollment")
    error: ErrorBody | None = Field(description="Why the card was not issued (failed)")
    result: dict[str, Any] | None = Field(
        description="{outcome, package_id, document_number (masked), apdus, duration_ms}"
    )


class StationState(BaseModel):
    """``GET /v1/state``, every action's answer and the stream's ``state`` messages."""

    model_config = ConfigDict(extra="forbid")

    screen: Literal[
        "welcome",
        "officer",
        "identify",
        "confirm",
        "consent",
        "portrait",
        "fingers",
        "review",
        "card",
        "receipt",
    ]
    seq: int = Field(description="Grows at every change; a screen ignores older states")
    language: Literal["vi", "en"]
    attended: bool = Field(description="An officer signs in before each enrollment")
    officer: dict[str, Any] | None = Field(description="{id, name, supervisor} when signed in")
    citizen: dict[str, Any] | None = Field(
        description="The directory's verified record while it is confirmed (docs/citizen-data.md)"
    )
    enrollment: str | None = Field(description="none, pending or completed (from the lookup)")
    corrections: list[dict[str, Any]] = Field(description="{field, original, requested}")
    session_id: str | None
    plan: list[int] = Field(description="Finger positions in capture order (4-4-2)")
    fingers: list[FingerStatus]
    current_finger: int | None = Field(description="The finger to place now")
    portrait: dict[str, Any] | None = Field(description="{quality, met} once sealed")
    approvals: list[dict[str, Any]] = Field(description="{position, reason, supervisor}")
    busy: Literal["lookup", "portrait", "finger", "submit", "card"] | None
    error: ErrorBody | None = Field(description="The last action's failure, for the screen")
    receipt: dict[str, Any] | None = Field(
        description="{reference, records, finished_at, card?: issued | not_issued}"
    )
    issuance: bool = Field(description="The citizen asked for the card at consent")
    issuance_offered: bool = Field(
        description="The consent screen offers the card (enrollment.instant_issuance, an "
        "encoder and a centre to ask)"
    )
    card: CardState | None = Field(description="The card screen's progress")
    notice: (
        Literal[
            "idle_timeout",
            "cancelled",
            "cancelled_remote",
            "consent_declined",
            "interrupted",
            "session_ended",
        ]
        | None
    )
    updated: float


class FaceBox(BaseModel):
    """A face's box in frame pixels."""

    x: int = Field(ge=0)
    y: int = Field(ge=0)
    w: int = Field(gt=0)
    h: int = Field(gt=0)


class GuidanceMessage(BaseModel):
    """Stream ``guidance``: the camera's verdict on a frame (no pixels)."""

    type: Literal["guidance"]
    frame: int
    score: int
    passed: bool
    failing: list[str]
    hints: list[str] = Field(description="come_closer, move_left... (docs/camera.md)")
    reasons: dict[str, str] = Field(default_factory=dict)
    face: FaceBox | None = Field(
        None, description="The face's box in frame pixels (the camera's view, not mirrored)"
    )
    frame_size: tuple[int, int] | None = Field(None, description="[width, height] of the frame")


class ProgressMessage(BaseModel):
    """Stream ``progress``: the sensor's steps for the finger being captured."""

    type: Literal["progress"]
    position: int
    step: str = Field(description="waiting_for_finger, lift, captured, quality, retry")
    attempt: int | None = None
    score: int | None = None


class CardMessage(BaseModel):
    """Stream ``card``: the encoder's step while the card is written (not stored)."""

    type: Literal["card"]
    step: str = Field(
        description="check_package, wait_card, check_blank, select_application, write:<file>, "
        "put_data:bac_seed, lock, verify:read (docs/card.md)"
    )


class PreviewMessage(BaseModel):
    """Stream ``preview``: a live frame while the portrait is taken, never stored."""

    type: Literal["preview"]
    jpeg: str = Field(description="Base64 JPEG at most 320 pixels wide")
    width: int = Field(le=320)
    height: int
    guidance: dict[str, Any] | None = None


def station_schemas() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for action, model in BODIES.items():
        schema = model.model_json_schema()
        schema["title"] = f"POST /v1/{action} body"
        out[f"local-api.{action}.json"] = schema
    for name, model in (
        ("state", StationState),
        ("event.guidance", GuidanceMessage),
        ("event.progress", ProgressMessage),
        ("event.preview", PreviewMessage),
        ("event.card", CardMessage),
    ):
        out[f"local-api.{name}.json"] = model.model_json_schema()
    return out
