"""A small validator of JSON values against the schemas of an OpenAPI 3.1 document (the subset
FastAPI emits: $ref, type, anyOf, properties, required, items, prefixItems,
additionalProperties, enum), so the API tests check answers against the committed document."""

from __future__ import annotations

from typing import Any

TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def validate(doc: dict[str, Any], schema: dict[str, Any], value: Any, path: str = "$") -> None:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        validate(doc, doc["components"]["schemas"][name], value, path)
        return
    if "anyOf" in schema:
        errors = []
        for alt in schema["anyOf"]:
            try:
                validate(doc, alt, value, path)
                return
            except AssertionError as exc:
                errors.append(str(exc))
        raise AssertionError(f"{path}: matches no alternative: {errors}")
    t = schema.get("type")
    if t == "integer":
        assert isinstance(value, int) and not isinstance(value, bool), f"{path}: not an integer"
    elif t == "number":
        assert isinstance(value, int | float) and not isinstance(value, bool), f"{path}: number"
    elif t is not None:
        assert isinstance(value, TYPES[t]), f"{path}: {value!r} is not {t}"
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in {schema['enum']}"
    if isinstance(value, dict):
        for req in schema.get("required", []):
            assert req in value, f"{path}: required {req} missing"
        props = schema.get("properties", {})
        for k, v in value.items():
            if k in props:
                validate(doc, props[k], v, f"{path}.{k}")
            elif isinstance(schema.get("additionalProperties"), dict):
                validate(doc, schema["additionalProperties"], v, f"{path}.{k}")
            elif props and schema.get("additionalProperties") is not True:
                raise AssertionError(f"{path}: {k} is not in the schema")
    if isinstance(value, list):
        if "prefixItems" in schema:
            assert len(value) == len(schema["prefixItems"]), f"{path}: tuple length"
            for i, (sub, v) in enumerate(zip(schema["prefixItems"], value, strict=True)):
                validate(doc, sub, v, f"{path}[{i}]")
        elif "items" in schema:
            for i, v in enumerate(value):
                validate(doc, schema["items"], v, f"{path}[{i}]")


def check_response(doc: dict[str, Any], method: str, template: str, resp: Any) -> None:
    """The response's status is documented for the operation and its body fits the schema."""
    op = doc["paths"][template][method.lower()]
    status = str(resp.status_code)
    assert status in op["responses"], f"{method} {template}: {status} is not documented"
    content = op["responses"][status].get("content", {})
    if "application/json" in content:
        validate(doc, content["application/json"]["schema"], resp.json())
