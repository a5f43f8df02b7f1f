"""docs/schemas is generated from the models and must be current."""

from __future__ import annotations

from appliance import schemas
from appliance.dispatch import CommandReply
from tests.helpers import ROOT


def test_committed_schemas_are_current() -> None:
    stale = schemas.check(ROOT / "docs" / "schemas")
    assert stale == [], f"regenerate with `appliance schemas --out docs/schemas`: {stale}"


def test_every_registered_command_has_a_schema_with_role_and_timeout() -> None:
    generated = schemas.generate()
    for spec in schemas.full_registry().specs():
        doc = generated[f"command.{spec.name}.json"]
        assert doc["x-role"] in {"operator", "admin", "technician"}
        assert doc["x-timeout-s"] > 0


def test_reply_shape() -> None:
    ok = CommandReply(id="a", cmd="ping", ok=True, result={"x": 1}).to_json()
    assert ok == '{"id":"a","cmd":"ping","ok":true,"result":{"x":1}}'
    bad = CommandReply(id=None, ok=False, error={"code": "invalid_json", "message": "m"}).to_json()
    assert bad == (
        '{"id":null,"ok":false,"error":{"code":"invalid_json","message":"m","details":{}}}'
    )
