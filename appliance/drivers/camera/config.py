"""Camera configuration (the ``[hardware.camera]`` table)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SimFault = Literal[
    "none",
    "no_face",
    "two_faces",
    "too_dark",
    "over_exposed",
    "blurred",
    "tilted",
    "off_centre",
    "too_far",
    "unplugged",
]


class QualityConfig(BaseModel):
    """Portrait quality limits (ISO/IEC 19794-5, ICAO photo rules, OFIQ components).

    Every component is scored 0-100 so that its limit maps to 50 and its ideal to 100; a
    component passes when its score is at least 50.
    """

    model_config = ConfigDict(extra="forbid")

    min_eye_distance_px: float = Field(
        60.0,
        gt=0,
        description="Smallest inter-eye distance in the frame, pixels (19794-5 token: W >= 240 "
        "so eyes >= 60 px apart); below it the citizen is asked to come closer",
    )
    good_eye_distance_px: float = Field(
        90.0, gt=0, description="Inter-eye distance that scores 100 (ICAO recommends >= 90 px)"
    )
    max_roll_deg: float = Field(
        8.0, gt=0, le=45, description="Largest head roll from the eye line, degrees (ICAO +/-8)"
    )
    max_yaw_deg: float = Field(
        8.0,
        gt=0,
        le=45,
        description="Largest estimated yaw, degrees. ICAO asks +/-5; the estimate from a 2-D "
        "face box is coarse (about +/-3 degrees), hence 8 by default",
    )
    max_pitch_deg: float = Field(
        8.0, gt=0, le=45, description="Largest estimated pitch, degrees (see max_yaw_deg)"
    )
    min_face_luma: float = Field(
        70.0, ge=0, le=255, description="Darkest acceptable mean face luminance (0-255)"
    )
    max_face_luma: float = Field(
        200.0, ge=0, le=255, description="Brightest acceptable mean face luminance (0-255)"
    )
    max_clipped_fraction: float = Field(
        0.05, ge=0, le=1, description="Largest fraction of face pixels at 250 or above"
    )
    min_contrast: float = Field(
        40.0, ge=0, le=255, description="Smallest 5th-95th percentile luminance spread on the face"
    )
    min_sharpness: float = Field(
        60.0,
        ge=0,
        description="Smallest variance of the Laplacian of the face resized to 96x96 pixels",
    )
    max_background_std: float = Field(
        22.0,
        ge=0,
        le=255,
        description="Largest luminance standard deviation of the background beside and above "
        "the head inside the token frame",
    )
    max_outside_fraction: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Largest share of the ICAO token frame that may fall outside the camera "
        "frame before the position fails",
    )
    detection_width: int = Field(
        192,
        ge=96,
        le=1024,
        description="Width the frame is scaled to for face detection (smaller is faster)",
    )

    @model_validator(mode="after")
    def _ordered(self) -> QualityConfig:
        if self.good_eye_distance_px <= self.min_eye_distance_px:
            raise ValueError("good_eye_distance_px must be larger than min_eye_distance_px")
        if self.max_face_luma <= self.min_face_luma:
            raise ValueError("max_face_luma must be larger than min_face_luma")
        return self


class CameraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Bring the camera up at start")
    backend: Literal["sim", "opencv", "picamera2"] = Field(
        "sim", description="sim: generated scene; opencv: USB/V4L2 webcam; picamera2: Pi camera"
    )
    device: str = Field(
        "0",
        description="opencv: V4L2 index or path, e.g. 0 or /dev/video0 (a video file or an "
        "image-sequence pattern such as frames/%03d.png also works, for tests); picamera2: "
        "camera number",
    )
    width: int = Field(640, ge=160, le=4096, description="Capture width in pixels")
    height: int = Field(480, ge=120, le=3072, description="Capture height in pixels")
    read_timeout_s: float = Field(
        2.0, gt=0, le=60, description="Longest wait for one frame before the read fails"
    )
    reopen_interval_s: float = Field(
        2.0,
        gt=0,
        le=300,
        description="While the camera is absent or failed, try to reopen it this often (hot-plug)",
    )
    jpeg_quality: int = Field(
        90, ge=50, le=100, description="JPEG quality of the stored token portrait"
    )
    jpeg2000: bool = Field(
        True,
        description="Also encode the token portrait as JPEG 2000 when Pillow supports it",
    )
    record_image: Literal["jpeg", "jpeg2000"] = Field(
        "jpeg",
        description="Which encoding of the token portrait goes into the ISO/IEC 19794-5 record "
        "(jpeg2000 needs jpeg2000 = true and Pillow built with OpenJPEG)",
    )
    guidance_interval_s: float = Field(
        0.5,
        ge=0.05,
        le=10,
        description="Shortest time between two guidance events during camera.capture",
    )
    default_min_quality: int = Field(
        50,
        ge=0,
        le=100,
        description="camera.capture's min_quality when the request gives none (50 = every "
        "component within its limit)",
    )
    records_kept: int = Field(
        4, ge=1, le=64, description="How many captured portraits the in-memory store keeps"
    )
    record_ttl_s: float = Field(
        900.0, gt=0, description="Captured portraits are forgotten after this many seconds"
    )
    snapshot_width: int = Field(
        320, ge=80, le=640, description="Width of a technician's camera.snapshot image"
    )
    sim_source: str = Field(
        "scene",
        description="sim: 'scene' for the generated portrait scene, or a glob of image files "
        "served in a loop",
    )
    sim_fault: SimFault = Field("none", description="sim: fault to inject into the scene")
    sim_fps: float = Field(
        30.0,
        gt=0,
        le=240,
        description="Frames per second the simulator (and an opencv file or image-sequence "
        "source) delivers",
    )
    sim_unplug_after: int | None = Field(
        None,
        ge=0,
        description="sim: frames delivered before the simulated cable is pulled (None: never)",
    )
    quality: QualityConfig = Field(
        default_factory=QualityConfig, description="Portrait quality limits"
    )
