"""Citizen data shared by the kiosk, the centre and issuance: one validation
(:mod:`appliance.citizen.validation`) and the official province codes
(:mod:`appliance.citizen.provinces`). docs/citizen-data.md lists every rule and its source."""

from .validation import (
    CitizenDataInvalid,
    CitizenRecord,
    Problem,
    Rule,
    Stage,
    card_expiry,
    check_citizen,
    validate_citizen,
    validate_many,
)

__all__ = [
    "CitizenDataInvalid",
    "CitizenRecord",
    "Problem",
    "Rule",
    "Stage",
    "card_expiry",
    "check_citizen",
    "validate_citizen",
    "validate_many",
]
