"""Every error code and event type of the wire (docs/protocol.md, "Error codes" and "Event
types", whose tables are generated from here by ``appliance schemas``).

:class:`ErrorCode` holds every ``code`` an :class:`~appliance.errors.ApplianceError` or a refusal
can carry, :class:`EventType` every event a kiosk emits. Both are ``StrEnum``: a member *is* its
string, so it compares, serialises (JSON, SQLite, pydantic) and prints as the literal it
replaces. A test scans appliance/ for a code or event type that is not a member.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """A stable machine-readable error code (``error.code`` of a reply, an audit row)."""

    PAYLOAD_TOO_LARGE = "payload_too_large"
    INVALID_JSON = "invalid_json"
    INVALID_REQUEST = "invalid_request"
    UNKNOWN_COMMAND = "unknown_command"
    INVALID_ARGS = "invalid_args"
    FORBIDDEN_ROLE = "forbidden_role"
    INVALID_ROLE = "invalid_role"
    BUSY = "busy"
    TIMEOUT = "timeout"
    IN_PROGRESS = "in_progress"
    INTERRUPTED = "interrupted"
    COMMAND_FAILED = "command_failed"
    INTERNAL_ERROR = "internal_error"
    CONFIG_INVALID = "config_invalid"
    MISSING_EXTRA = "missing_extra"
    STORE_ERROR = "store_error"
    OUTBOX_FULL = "outbox_full"
    DEVICE_ERROR = "device_error"
    DEVICE_TIMEOUT = "device_timeout"
    DEVICE_DISCONNECTED = "device_disconnected"
    PROTOCOL_ERROR = "protocol_error"
    DEVICE_STATUS = "device_status"
    DEVICE_NOT_READY = "device_not_ready"
    UNSUPPORTED = "unsupported"
    CANCELLED = "cancelled"
    NO_FINGER = "no_finger"
    FINGER_STATUS = "finger_status"
    NO_FACE = "no_face"
    BAD_FINGER_RECORD = "bad_finger_record"
    BAD_FACE_RECORD = "bad_face_record"
    CARD_SPOILED = "card_spoiled"
    CARD_NOT_BLANK = "card_not_blank"
    BAC_FAILED = "bac_failed"
    READER_ABSENT = "reader_absent"
    NO_CARD = "no_card"
    CARD_REMOVED = "card_removed"
    CARD_MUTE = "card_mute"
    READBACK_MISMATCH = "readback_mismatch"
    SM_ERROR = "sm_error"
    CARD_CAPACITY = "card_capacity"
    PROFILE_MISMATCH = "profile_mismatch"
    LDS_MALFORMED = "lds_malformed"
    SOD_SIGNATURE_INVALID = "sod_signature_invalid"
    SOD_CHAIN_INVALID = "sod_chain_invalid"
    DG_HASH_MISMATCH = "dg_hash_mismatch"
    PASSIVE_AUTHENTICATION_FAILED = "passive_authentication_failed"
    TRUST_BUNDLE_MISSING = "trust_bundle_missing"
    CITIZEN_INVALID = "citizen_invalid"
    ISSUANCE_DISABLED = "issuance_disabled"
    ISSUANCE_INVALID = "issuance_invalid"
    ISSUANCE_MISMATCH = "issuance_mismatch"
    ISSUANCE_REFUSED = "issuance_refused"
    ISSUANCE_TIMEOUT = "issuance_timeout"
    NO_SESSION = "no_session"
    INCOMPLETE = "incomplete"
    NOTHING_TO_CAPTURE = "nothing_to_capture"
    NOT_PROVISIONED = "not_provisioned"
    LOST_RECORD = "lost_record"
    DUPLICATE_FINGER = "duplicate_finger"
    OFFICER_FINGER = "officer_finger"
    NO_ROOM = "no_room"
    EXPORT_FAILED = "export_failed"
    LOOKUP_REQUIRED = "lookup_required"
    BAD_PACKAGE = "bad_package"
    TRUST_ERROR = "trust_error"
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    UNTRUSTED_ISSUER = "untrusted_issuer"
    CERT_EXPIRED = "cert_expired"
    CERT_REVOKED = "cert_revoked"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    WRONG_TARGET = "wrong_target"
    REPLAYED = "replayed"
    MALFORMED_ENVELOPE = "malformed_envelope"
    MALFORMED_CERTIFICATE = "malformed_certificate"
    KEY_UNREADABLE = "key_unreadable"
    KEY_MISSING = "key_missing"
    KEY_MALFORMED = "key_malformed"
    KEY_PERMISSIONS = "key_permissions"
    KEY_EXISTS = "key_exists"
    INVALID_VALIDITY = "invalid_validity"
    INVALID_NAME = "invalid_name"
    LOOKUP_FAILED = "lookup_failed"
    DIRECTORY_OFFLINE = "directory_offline"
    DIRECTORY_TIMEOUT = "directory_timeout"
    WRONG_REQUEST = "wrong_request"
    BATCH_NOT_FOUND = "batch_not_found"
    BATCH_EXISTS = "batch_exists"
    BATCH_EMPTY = "batch_empty"
    IMPORT_MALFORMED = "import_malformed"
    PROVISION_FAILED = "provision_failed"
    CLAIM_PENDING = "claim_pending"
    MALFORMED_REQUEST = "malformed_request"
    STALE_RESPONSE = "stale_response"
    TOKEN_MALFORMED = "token_malformed"  # noqa: S105 (not a password)
    TOKEN_UNKNOWN = "token_unknown"  # noqa: S105 (not a password)
    BAD_PROOF = "bad_proof"
    TOKEN_USED = "token_used"  # noqa: S105 (not a password)
    TOKEN_EXPIRED = "token_expired"  # noqa: S105 (not a password)
    DEVICE_EXISTS = "device_exists"
    DENIED = "denied"
    CERT_ISSUE_FAILED = "cert_issue_failed"
    REGISTRY_CORRUPT = "registry_corrupt"
    RELEASE_MALFORMED = "release_malformed"
    RELEASE_UNSIGNED = "release_unsigned"
    RELEASE_TAMPERED = "release_tampered"
    RELEASE_WRONG_PLATFORM = "release_wrong_platform"
    RELEASE_DOWNGRADE = "release_downgrade"
    RELEASE_BASE_TOO_OLD = "release_base_too_old"
    RELEASE_BUILD_FAILED = "release_build_failed"
    UPDATE_FAILED = "update_failed"
    UPDATE_NO_SPACE = "update_no_space"
    UPDATE_INSTALL_FAILED = "update_install_failed"
    UPDATE_IN_PROGRESS = "update_in_progress"
    UPDATE_NOT_READY = "update_not_ready"
    UPDATE_SELFTEST_FAILED = "update_selftest_failed"
    JOB_EXPIRED = "job_expired"
    JOB_INVALID = "job_invalid"
    JOB_UNKNOWN = "job_unknown"
    JOB_KIND_UNSUPPORTED = "job_kind_unsupported"
    BROKER_UNREACHABLE = "broker_unreachable"
    TLS_FILES = "tls_files"
    USAGE = "usage"
    SEALED_CORRUPT = "sealed_corrupt"
    RECORD_EXISTS = "record_exists"
    RECORD_MISSING = "record_missing"
    WRONG_DEVICE = "wrong_device"
    CHAIN_BROKEN = "chain_broken"
    RECORD_MALFORMED = "record_malformed"
    RECORD_HASH_MISMATCH = "record_hash_mismatch"
    SEALED_MALFORMED = "sealed_malformed"
    SEALED_MISMATCH = "sealed_mismatch"
    UNSEAL_FAILED = "unseal_failed"
    CHUNK_MALFORMED = "chunk_malformed"
    PACKAGE_ID_REUSED = "package_id_reused"
    PACKAGE_MALFORMED = "package_malformed"
    UPLOAD_UNKNOWN = "upload_unknown"
    UPLOAD_INCOMPLETE = "upload_incomplete"
    UNKNOWN_DEVICE = "unknown_device"
    STORE_CORRUPT = "store_corrupt"
    NO_PORTRAIT = "no_portrait"
    ENROLLMENT_UNKNOWN = "enrollment_unknown"
    CITIZEN_UNKNOWN = "citizen_unknown"
    CITIZEN_INCOMPLETE = "citizen_incomplete"
    CITIZEN_CONFLICT = "citizen_conflict"
    STATION_STATE = "station_state"
    OFFICER_REFUSED = "officer_refused"
    OFFICER_EXPIRED = "officer_expired"
    SUPERVISOR_REQUIRED = "supervisor_required"
    NO_RECEIPT = "no_receipt"
    CITIZEN_NOT_FOUND = "citizen_not_found"
    CITIZEN_FOUND = "citizen_found"
    CITIZEN_INVALID_REQUEST = "citizen_invalid_request"
    CITIZEN_RECORD_INVALID = "citizen_record_invalid"
    SCREEN_TOKEN_REQUIRED = "screen_token_required"  # noqa: S105 (not a password)
    FORBIDDEN_PEER = "forbidden_peer"
    NOT_FOUND = "not_found"
    CONTROLLER_TIMEOUT = "controller_timeout"
    UNPARSEABLE_REPLY = "unparseable_reply"
    MALFORMED_MESSAGE = "malformed_message"
    BROKER_FAILED = "broker_failed"
    MISSING_BROKER = "missing_broker"
    PKI_FAILED = "pki_failed"


class EventType(StrEnum):
    """The ``type`` of an event (``{prefix}/{device}/events/{type}``)."""

    NOTE = "note"
    DEVICE_HEALTH = "device.health"
    COMMAND_PROGRESS = "command.progress"
    CAMERA_GUIDANCE = "camera.guidance"
    CARD_INSERTED = "card.inserted"
    CARD_REMOVED = "card.removed"
    CARD_ISSUED = "card.issued"
    CARD_SPOILED = "card.spoiled"
    ENROLLMENT_STARTED = "enrollment.started"
    ENROLLMENT_RESUMED = "enrollment.resumed"
    ENROLLMENT_PROGRESS = "enrollment.progress"
    ENROLLMENT_SKIPPED = "enrollment.skipped"
    ENROLLMENT_RECORD_SEALED = "enrollment.record_sealed"
    ENROLLMENT_FINISHED = "enrollment.finished"
    ENROLLMENT_CANCELLED = "enrollment.cancelled"
    ENROLLMENT_ABORTED = "enrollment.aborted"
    ENROLLMENT_UPLOADED = "enrollment.uploaded"
    ENROLLMENT_REJECTED = "enrollment.rejected"
    ENROLLMENT_UPLOAD_FAILED = "enrollment.upload_failed"
    ENROLLMENT_PURGED = "enrollment.purged"
    STATION_STATE = "station.state"
    ENROLLMENT_SIMULATED = "enrollment.simulated"


#: One line per error code: (meaning, whether a retry may help), docs/protocol.md's table.
ERROR_MEANINGS: dict[ErrorCode, tuple[str, str]] = {
    ErrorCode.PAYLOAD_TOO_LARGE: (
        "payload over `commands.max_payload_bytes`",
        "no",
    ),
    ErrorCode.INVALID_JSON: (
        "not UTF-8 JSON",
        "no",
    ),
    ErrorCode.INVALID_REQUEST: (
        "not an object `{id, cmd, args}` (missing or extra fields, bad id), or a reused id",
        "no (with a new id)",
    ),
    ErrorCode.UNKNOWN_COMMAND: (
        "no such command here (under signing said only to an authenticated sender)",
        "no",
    ),
    ErrorCode.INVALID_ARGS: (
        "arguments violate the command's schema; `details.problems` lists `field: reason`",
        "no",
    ),
    ErrorCode.FORBIDDEN_ROLE: (
        "the signer's certificate lacks the command's role",
        "no",
    ),
    ErrorCode.INVALID_ROLE: (
        "a command registered without a valid role (a programming error at start-up)",
        "no",
    ),
    ErrorCode.BUSY: (
        "an intrusive command during an enrollment session, or the device is in use",
        "yes, later",
    ),
    ErrorCode.TIMEOUT: (
        "the command did not finish within its timeout; its late result is discarded",
        "yes, with a new id",
    ),
    ErrorCode.IN_PROGRESS: (
        "this id is running now",
        "wait for its reply",
    ),
    ErrorCode.INTERRUPTED: (
        "this id was running when the daemon stopped; it was not completed",
        "with a new id",
    ),
    ErrorCode.COMMAND_FAILED: (
        "a command failed without a more precise code",
        "per `retryable`",
    ),
    ErrorCode.INTERNAL_ERROR: (
        "a bug; the daemon logged a traceback and keeps serving",
        "report it",
    ),
    ErrorCode.CONFIG_INVALID: (
        "configuration that cannot be loaded or validated; `details.problems`: `field: reason`",
        "no",
    ),
    ErrorCode.MISSING_EXTRA: (
        "the configured backend needs an optional dependency that is not installed",
        "no",
    ),
    ErrorCode.STORE_ERROR: (
        "the kiosk's store failed; nothing was recorded or run",
        "yes",
    ),
    ErrorCode.OUTBOX_FULL: (
        "the outbox holds `store.outbox_max_rows` events; the new event is refused",
        "yes, once drained",
    ),
    ErrorCode.DEVICE_ERROR: (
        "a device failed; `details.device` names it",
        "per `retryable`",
    ),
    ErrorCode.DEVICE_TIMEOUT: (
        "a device did not answer before its deadline",
        "yes",
    ),
    ErrorCode.DEVICE_DISCONNECTED: (
        "a device is unplugged or its port or reader vanished",
        "yes",
    ),
    ErrorCode.PROTOCOL_ERROR: (
        "bytes from a device did not parse (header, checksum, length, unexpected reply)",
        "yes",
    ),
    ErrorCode.DEVICE_STATUS: (
        "a device answered with a non-success status; `details.status` is the raw value",
        "per `retryable`",
    ),
    ErrorCode.DEVICE_NOT_READY: (
        "the device is not configured (the card encoder without a usable profile)",
        "no",
    ),
    ErrorCode.UNSUPPORTED: (
        "the sensor model does not support this instruction",
        "no",
    ),
    ErrorCode.CANCELLED: (
        "a capture stopped by its command's cancellation (timeout)",
        "with a new id",
    ),
    ErrorCode.NO_FINGER: (
        "no finger on the sensor within the capture time (docs/fingerprint.md)",
        "yes",
    ),
    ErrorCode.FINGER_STATUS: (
        "the sensor refused a capture step with its confirmation code (docs/fingerprint.md)",
        "per `retryable`",
    ),
    ErrorCode.NO_FACE: (
        "no usable face in the camera's view within the capture time (docs/camera.md)",
        "yes",
    ),
    ErrorCode.BAD_FINGER_RECORD: (
        "a finger image cannot be made into an ISO/IEC 19794-4 record",
        "no",
    ),
    ErrorCode.BAD_FACE_RECORD: (
        "a portrait cannot be made into an ISO/IEC 19794-5 record",
        "no",
    ),
    ErrorCode.CARD_SPOILED: (
        "a write started and failed: the chip must not be reused; `details.step`",
        "no (new card)",
    ),
    ErrorCode.CARD_NOT_BLANK: (
        "the card in the reader is already personalised",
        "no (new card)",
    ),
    ErrorCode.BAC_FAILED: (
        "Basic Access Control failed against the chip",
        "per `retryable`",
    ),
    ErrorCode.READER_ABSENT: (
        "no PC/SC reader",
        "yes",
    ),
    ErrorCode.NO_CARD: (
        "no card in the reader within `card.card_wait_s`",
        "yes",
    ),
    ErrorCode.CARD_REMOVED: (
        "the card left the reader during the operation",
        "yes",
    ),
    ErrorCode.CARD_MUTE: (
        "the card does not answer",
        "yes",
    ),
    ErrorCode.READBACK_MISMATCH: (
        "the chip's read-back differs from what was written",
        "no",
    ),
    ErrorCode.SM_ERROR: (
        "ICAO 9303 secure messaging failed (MAC, sequence counter, padding)",
        "per `retryable`",
    ),
    ErrorCode.CARD_CAPACITY: (
        "the package holds more than the card stock's memory",
        "no",
    ),
    ErrorCode.PROFILE_MISMATCH: (
        "the package was built for another card profile",
        "no",
    ),
    ErrorCode.LDS_MALFORMED: (
        "a data group or EF.COM does not parse",
        "no",
    ),
    ErrorCode.SOD_SIGNATURE_INVALID: (
        "EF.SOD's signature does not verify",
        "no",
    ),
    ErrorCode.SOD_CHAIN_INVALID: (
        "EF.SOD's document signer does not chain to the CSCA trust bundle",
        "no",
    ),
    ErrorCode.DG_HASH_MISMATCH: (
        "a data group's hash differs from EF.SOD's",
        "no",
    ),
    ErrorCode.PASSIVE_AUTHENTICATION_FAILED: (
        "Passive Authentication of the chip read back failed",
        "no",
    ),
    ErrorCode.TRUST_BUNDLE_MISSING: (
        "no CSCA trust bundle to check EF.SOD with",
        "no",
    ),
    ErrorCode.CITIZEN_INVALID: (
        "signed, but the citizen data is inconsistent; `details.problems` lists each rule",
        "no",
    ),
    ErrorCode.ISSUANCE_DISABLED: (
        "instant card issuance is off on this kiosk (`enrollment.instant_issuance`)",
        "no",
    ),
    ErrorCode.ISSUANCE_INVALID: (
        "the centre cannot build the LDS of an enrollment",
        "no",
    ),
    ErrorCode.ISSUANCE_MISMATCH: (
        "the centre's issuance package is for another enrollment or citizen than the station's",
        "no",
    ),
    ErrorCode.ISSUANCE_REFUSED: (
        "the centre will not issue a card for this enrollment (`details.cause` says why)",
        "no",
    ),
    ErrorCode.ISSUANCE_TIMEOUT: (
        "no issuance package from the centre in time (the enrollment is kept: issue later)",
        "yes",
    ),
    ErrorCode.NO_SESSION: (
        "no enrollment session is active",
        "no",
    ),
    ErrorCode.INCOMPLETE: (
        "the session lacks captures its policy requires",
        "no",
    ),
    ErrorCode.NOTHING_TO_CAPTURE: (
        "every position of the policy is captured or skipped",
        "no",
    ),
    ErrorCode.NOT_PROVISIONED: (
        "no fleet root or enrollment key on this kiosk",
        "no",
    ),
    ErrorCode.LOST_RECORD: (
        "a sealed record of the session is missing from disk",
        "no",
    ),
    ErrorCode.DUPLICATE_FINGER: (
        "the finger matches one captured for this citizen (sensor 1:1); `details.matches_position`",
        "yes, with the right finger",
    ),
    ErrorCode.OFFICER_FINGER: (
        "the finger matches one of the signed-in officer's; `details.officer_position`",
        "yes, with the right finger",
    ),
    ErrorCode.NO_ROOM: (
        "an enrollment's worst-case size does not fit on the state directory's file system",
        "yes, after uploading or exporting",
    ),
    ErrorCode.EXPORT_FAILED: (
        "exporting the kiosk's packages failed (an OS error)",
        "per the message",
    ),
    ErrorCode.LOOKUP_REQUIRED: (
        "corrections need a verified lookup of the citizen first",
        "no",
    ),
    ErrorCode.BAD_PACKAGE: (
        "an enrollment package or chunk that does not parse",
        "no",
    ),
    ErrorCode.TRUST_ERROR: (
        "a signature, certificate, envelope or sealed object failed verification",
        "no",
    ),
    ErrorCode.UNSIGNED: (
        "an unsigned message where a signature is required",
        "no (sign it)",
    ),
    ErrorCode.BAD_SIGNATURE: (
        "the signature does not verify",
        "no",
    ),
    ErrorCode.UNTRUSTED_ISSUER: (
        "the signing certificate does not chain to the fleet root",
        "no",
    ),
    ErrorCode.CERT_EXPIRED: (
        "the signing certificate expired",
        "no",
    ),
    ErrorCode.CERT_REVOKED: (
        "the signing certificate is revoked",
        "no",
    ),
    ErrorCode.NOT_YET_VALID: (
        "the envelope or certificate is not valid yet (clock skew)",
        "no",
    ),
    ErrorCode.EXPIRED: (
        "the signed envelope expired",
        "no (sign a new envelope)",
    ),
    ErrorCode.WRONG_TARGET: (
        "the envelope names another device or group",
        "no",
    ),
    ErrorCode.REPLAYED: (
        "an envelope already seen (counter or nonce); only for an envelope whose id never ran",
        "no (sign a new envelope)",
    ),
    ErrorCode.MALFORMED_ENVELOPE: (
        "the signed document does not parse",
        "no",
    ),
    ErrorCode.MALFORMED_CERTIFICATE: (
        "a certificate token does not parse",
        "no",
    ),
    ErrorCode.KEY_UNREADABLE: (
        "a key file cannot be read or parsed",
        "no",
    ),
    ErrorCode.KEY_MISSING: (
        "a key file the tool needs does not exist",
        "no",
    ),
    ErrorCode.KEY_MALFORMED: (
        "a key file holds something other than the expected key",
        "no",
    ),
    ErrorCode.KEY_PERMISSIONS: (
        "a private key file is readable by group or others",
        "no (chmod 600)",
    ),
    ErrorCode.KEY_EXISTS: (
        "the device is already approved with another key",
        "no",
    ),
    ErrorCode.INVALID_VALIDITY: (
        "a certificate validity that is not a positive duration",
        "no",
    ),
    ErrorCode.INVALID_NAME: (
        "a device id or package id that is not a safe name",
        "no",
    ),
    ErrorCode.LOOKUP_FAILED: (
        "a citizen lookup got no acceptable answer",
        "per `retryable`",
    ),
    ErrorCode.DIRECTORY_OFFLINE: (
        "the kiosk is not connected to the broker",
        "yes",
    ),
    ErrorCode.DIRECTORY_TIMEOUT: (
        "no answer from the directory in `timeout_s`",
        "yes",
    ),
    ErrorCode.WRONG_REQUEST: (
        "the directory's answer is for another request",
        "no",
    ),
    ErrorCode.BATCH_NOT_FOUND: (
        "the directory has no such citizen batch, or it expired",
        "no",
    ),
    ErrorCode.BATCH_EXISTS: (
        "a citizen batch id already in use",
        "no",
    ),
    ErrorCode.BATCH_EMPTY: (
        "a citizen batch selection that is empty",
        "no",
    ),
    ErrorCode.IMPORT_MALFORMED: (
        "an export listing that does not parse or names another device",
        "no",
    ),
    ErrorCode.PROVISION_FAILED: (
        "a provisioning step failed; `details.next_step` says what to do",
        "per `retryable`",
    ),
    ErrorCode.CLAIM_PENDING: (
        "the claim is sent and waits for the fleet's approval",
        "yes, later",
    ),
    ErrorCode.MALFORMED_REQUEST: (
        "a claim request that does not parse",
        "no",
    ),
    ErrorCode.STALE_RESPONSE: (
        "a claim response that answers another request",
        "no",
    ),
    ErrorCode.TOKEN_MALFORMED: (
        "a claim token that is not of the form `tID.SECRET`",
        "no",
    ),
    ErrorCode.TOKEN_UNKNOWN: (
        "a claim refused: this fleet never issued the token (docs/provisioning.md)",
        "no (a new token)",
    ),
    ErrorCode.BAD_PROOF: (
        "a claim refused: the request was not made with the token's secret (mistyped token)",
        "with the exact token",
    ),
    ErrorCode.TOKEN_USED: (
        "a claim refused: the claim token was already used by another claim",
        "no (a new token)",
    ),
    ErrorCode.TOKEN_EXPIRED: (
        "a claim refused: the claim token expired",
        "no (a new token)",
    ),
    ErrorCode.DEVICE_EXISTS: (
        "a claim refused: the device id is registered with another key",
        "after `approve --replace`, or with another id",
    ),
    ErrorCode.DENIED: (
        "a claim refused by the administrator (`approve --deny REASON`)",
        "no",
    ),
    ErrorCode.CERT_ISSUE_FAILED: (
        "issuing the kiosk's broker certificate failed",
        "no",
    ),
    ErrorCode.REGISTRY_CORRUPT: (
        "the fleet registry file cannot be read",
        "no",
    ),
    ErrorCode.RELEASE_MALFORMED: (
        "a release bundle that does not parse; `details.field` names the manifest field",
        "no",
    ),
    ErrorCode.RELEASE_UNSIGNED: (
        "a release bundle without a valid release signature",
        "no",
    ),
    ErrorCode.RELEASE_TAMPERED: (
        "a file of the bundle differs from its signed manifest",
        "no",
    ),
    ErrorCode.RELEASE_WRONG_PLATFORM: (
        "a bundle built for another platform",
        "no",
    ),
    ErrorCode.RELEASE_DOWNGRADE: (
        "a bundle older than the running version",
        "no",
    ),
    ErrorCode.RELEASE_BASE_TOO_OLD: (
        "a delta bundle whose base is older than the running version",
        "no",
    ),
    ErrorCode.RELEASE_BUILD_FAILED: (
        "building a release bundle failed (fleet tools)",
        "no",
    ),
    ErrorCode.UPDATE_FAILED: (
        "a software update step failed",
        "no",
    ),
    ErrorCode.UPDATE_NO_SPACE: (
        "the new version does not fit on the disk",
        "after freeing space",
    ),
    ErrorCode.UPDATE_INSTALL_FAILED: (
        "installing the new version beside the running one failed",
        "no",
    ),
    ErrorCode.UPDATE_IN_PROGRESS: (
        "another update is being installed or tried",
        "no",
    ),
    ErrorCode.UPDATE_NOT_READY: (
        "the update is not in a state for this step",
        "no",
    ),
    ErrorCode.UPDATE_SELFTEST_FAILED: (
        "the new version's own selftest failed during its trial",
        "no",
    ),
    ErrorCode.JOB_EXPIRED: (
        "the fleet job's signed document expired",
        "no",
    ),
    ErrorCode.JOB_INVALID: (
        "a fleet job document that does not validate",
        "no",
    ),
    ErrorCode.JOB_UNKNOWN: (
        "no fleet job of that id",
        "no",
    ),
    ErrorCode.JOB_KIND_UNSUPPORTED: (
        "a fleet job of a kind this kiosk does not run",
        "no",
    ),
    ErrorCode.BROKER_UNREACHABLE: (
        "the broker could not be reached, refused the connection or did not answer in time",
        "yes",
    ),
    ErrorCode.TLS_FILES: (
        "the TLS files cannot be loaded",
        "no",
    ),
    ErrorCode.USAGE: (
        "a command line that cannot be run as given",
        "no",
    ),
    ErrorCode.SEALED_CORRUPT: (
        "a sealed record file that does not parse",
        "no",
    ),
    ErrorCode.RECORD_EXISTS: (
        "a sealed record of that id already exists",
        "no",
    ),
    ErrorCode.RECORD_MISSING: (
        "no sealed record of that id",
        "no",
    ),
    ErrorCode.WRONG_DEVICE: (
        "the package names another device than the one that uploaded it",
        "no",
    ),
    ErrorCode.CHAIN_BROKEN: (
        "the manifest's hash chain does not hold",
        "no",
    ),
    ErrorCode.RECORD_MALFORMED: (
        "a record of the package does not parse",
        "no",
    ),
    ErrorCode.RECORD_HASH_MISMATCH: (
        "a record's SHA-256 differs from the manifest's",
        "no",
    ),
    ErrorCode.SEALED_MALFORMED: (
        "a sealed record in the package does not parse",
        "no",
    ),
    ErrorCode.SEALED_MISMATCH: (
        "a sealed record differs from what the manifest lists (digest, size, id)",
        "no",
    ),
    ErrorCode.UNSEAL_FAILED: (
        "a sealed record does not open with the enrollment key",
        "no",
    ),
    ErrorCode.CHUNK_MALFORMED: (
        "an upload chunk that does not parse or names another package",
        "no",
    ),
    ErrorCode.PACKAGE_ID_REUSED: (
        "a package id already used for other content",
        "no",
    ),
    ErrorCode.PACKAGE_MALFORMED: (
        "a package, its manifest or its chunks do not parse as the contract's model "
        "(`details.field` names the manifest field), or the chunks do not add up to the "
        "announced package",
        "no",
    ),
    ErrorCode.UPLOAD_UNKNOWN: (
        "no upload of that device and package id",
        "no",
    ),
    ErrorCode.UPLOAD_INCOMPLETE: (
        "a chunk of the upload is missing",
        "yes",
    ),
    ErrorCode.UNKNOWN_DEVICE: (
        "an upload from a device the centre has no key for",
        "no",
    ),
    ErrorCode.STORE_CORRUPT: (
        "a file of the central store cannot be read",
        "no",
    ),
    ErrorCode.NO_PORTRAIT: (
        "the package holds no portrait",
        "no",
    ),
    ErrorCode.ENROLLMENT_UNKNOWN: (
        "no verified enrollment matches",
        "no",
    ),
    ErrorCode.CITIZEN_UNKNOWN: (
        "no citizen with that reference in the citizens file",
        "no",
    ),
    ErrorCode.CITIZEN_INCOMPLETE: (
        "a citizen without the data an issuance needs",
        "no",
    ),
    ErrorCode.CITIZEN_CONFLICT: (
        "a personal id held by two citizen references",
        "no",
    ),
    ErrorCode.STATION_STATE: (
        "the station refuses the action here (wrong screen, no consent, bad input)",
        "no",
    ),
    ErrorCode.OFFICER_REFUSED: (
        "an unknown officer, a wrong secret or an expired entry",
        "no",
    ),
    ErrorCode.OFFICER_EXPIRED: (
        "the officer's credential expired; the fleet must renew it",
        "no",
    ),
    ErrorCode.SUPERVISOR_REQUIRED: (
        "approving an exception needs a supervisor",
        "no",
    ),
    ErrorCode.NO_RECEIPT: (
        "there is no receipt to show",
        "no",
    ),
    ErrorCode.CITIZEN_NOT_FOUND: (
        "the looked-up number is not in the citizen directory",
        "no",
    ),
    ErrorCode.CITIZEN_FOUND: (
        "the directory answered found but sent no record",
        "no",
    ),
    ErrorCode.CITIZEN_INVALID_REQUEST: (
        "the directory refused the lookup request as invalid",
        "no",
    ),
    ErrorCode.CITIZEN_RECORD_INVALID: (
        "the directory's record of the citizen fails the citizen data rules",
        "no",
    ),
    ErrorCode.SCREEN_TOKEN_REQUIRED: (
        "a local API request without the per-boot screen token",
        "no",
    ),
    ErrorCode.FORBIDDEN_PEER: (
        "a local API request from a peer that is not loopback",
        "no",
    ),
    ErrorCode.NOT_FOUND: (
        "a local API path that does not exist",
        "no",
    ),
    ErrorCode.CONTROLLER_TIMEOUT: (
        "the dev controller got no answer in time",
        "yes",
    ),
    ErrorCode.UNPARSEABLE_REPLY: (
        "a reply to the dev controller that is not JSON",
        "no",
    ),
    ErrorCode.MALFORMED_MESSAGE: (
        "a status, event, telemetry or reply that does not parse as the contract's model "
        "(appliance/protocol/messages.py); the fleet tools log it with the field and count it",
        "no",
    ),
    ErrorCode.BROKER_FAILED: (
        "rendering or starting the local broker failed",
        "no",
    ),
    ErrorCode.MISSING_BROKER: (
        "mosquitto is not installed",
        "no",
    ),
    ErrorCode.PKI_FAILED: (
        "the dev PKI script failed",
        "no",
    ),
}

#: One line per event type, docs/protocol.md's table.
EVENT_MEANINGS: dict[EventType, str] = {
    EventType.NOTE: "a technician's note: `{text, tags, command_id}`",
    EventType.DEVICE_HEALTH: "a device changed state: `{device, state, detail, previous}`",
    EventType.COMMAND_PROGRESS: "QoS 0, transient: `{command_id, command, step, ...}`",
    EventType.CAMERA_GUIDANCE: "QoS 0, transient: framing guidance during a portrait capture",
    EventType.CARD_INSERTED: "a card entered the reader: `{reader, atr}`",
    EventType.CARD_REMOVED: "the card left the reader: `{reader}`",
    EventType.CARD_ISSUED: "a chip was personalised and verified: `{package_id, apdus}`",
    EventType.CARD_SPOILED: "a write failed part-way: `{package_id, step, cause}` (docs/card.md)",
    EventType.ENROLLMENT_STARTED: "an enrollment session started (docs/enrollment.md)",
    EventType.ENROLLMENT_RESUMED: "the daemon restarted with a session it resumes",
    EventType.ENROLLMENT_PROGRESS: "a capture step of the session",
    EventType.ENROLLMENT_SKIPPED: "a position recorded as skipped (bandaged, missing)",
    EventType.ENROLLMENT_RECORD_SEALED: "a biometric record sealed to the centre's key",
    EventType.ENROLLMENT_FINISHED: "the session finished: the package is built",
    EventType.ENROLLMENT_CANCELLED: "the session was cancelled; its records shredded",
    EventType.ENROLLMENT_ABORTED: "an idle session dropped after a restart; its records shredded",
    EventType.ENROLLMENT_UPLOADED: "the centre received the whole package",
    EventType.ENROLLMENT_REJECTED: "the centre rejected the package",
    EventType.ENROLLMENT_UPLOAD_FAILED: "the upload gave up",
    EventType.ENROLLMENT_PURGED: "the centre's receipt verified; the sealed records shredded",
    EventType.STATION_STATE: "the station screen changed: `{screen, session_id, busy, ...}`",
    EventType.ENROLLMENT_SIMULATED: "the fleet simulator's stand-in for an enrollment",
}
