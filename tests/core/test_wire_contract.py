"""The wire contract (appliance/protocol/): the topic tree is spelled in one module, and every
topic it builds parses back to its kind and device."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path
from typing import Literal

import pytest

from appliance import schemas
from appliance.protocol.codes import ERROR_MEANINGS, EVENT_MEANINGS, ErrorCode, EventType
from appliance.protocol.topics import ANY, TopicKind, Topics, parse, shared
from tests.helpers import ROOT

CONTRACT = ROOT / "appliance" / "protocol"

# Levels of the tree that only a topic spells: a literal holding one of them (or starting with
# the default prefix, or a shared-subscription head) is a topic written outside the contract.
_TOPIC_LITERAL = re.compile(
    r"^\$share/|^kiosk/|(^|/)(events|upload|outbox|lookup|config)/|/(claims|group|_ctl)/"
    r"|^/(status|telemetry|cmd|reply)$|/\+/|/#$"
)


def _docstrings(tree: ast.AST) -> set[int]:
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _prefix_fstring(node: ast.JoinedStr) -> bool:
    """``f"{prefix}/..."``, ``f"{self.prefix}/..."``: a topic built by hand."""
    return any(
        isinstance(first, ast.FormattedValue)
        and "prefix" in ast.unparse(first.value)
        and isinstance(second, ast.Constant)
        and str(second.value).startswith("/")
        for first, second in zip(node.values, node.values[1:], strict=False)
    )


def topic_strings(root: Path) -> list[str]:
    hits = []
    for path in sorted(root.rglob("*.py")):
        if CONTRACT in path.parents:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docs = _docstrings(tree)
        rel = path.relative_to(root).as_posix()
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr) and _prefix_fstring(node):
                hits.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docs
                and "\n" not in node.value
                and " " not in node.value
                and _TOPIC_LITERAL.search(node.value)
            ):
                hits.append(f"{rel}:{node.lineno}: {node.value!r}")
    return hits


def test_no_topic_is_spelled_outside_the_contract() -> None:
    hits = topic_strings(ROOT / "appliance")
    assert hits == [], "build topics with appliance.protocol.topics:\n" + "\n".join(hits)


def test_the_scan_finds_a_hand_built_topic(tmp_path: Path) -> None:
    src = tmp_path / "x.py"
    src.write_text(
        'def f(prefix, d):\n    return f"{prefix}/{d}/x"\n\n\nS = "$share/g/kiosk/+/status"\n'
    )
    assert sorted(h.split(":")[1] for h in topic_strings(tmp_path)) == ["2", "5"]


EVERY = [
    (lambda t: t.status, TopicKind.STATUS, None),
    (lambda t: t.telemetry, TopicKind.TELEMETRY, None),
    (lambda t: t.event("card.inserted"), TopicKind.EVENT, "card.inserted"),
    (lambda t: t.cmd, TopicKind.CMD, None),
    (lambda t: t.reply, TopicKind.REPLY, None),
    (lambda t: t.config_desired, TopicKind.CONFIG_DESIRED, None),
    (lambda t: t.config_reported, TopicKind.CONFIG_REPORTED, None),
    (lambda t: t.upload("pkg-1"), TopicKind.UPLOAD, "pkg-1"),
    (lambda t: t.upload_ack, TopicKind.UPLOAD_ACK, None),
    (lambda t: t.upload_receipt, TopicKind.UPLOAD_RECEIPT, None),
    (lambda t: t.outbox_ack, TopicKind.OUTBOX_ACK, None),
    (lambda t: t.lookup_request, TopicKind.LOOKUP_REQUEST, None),
    (lambda t: t.lookup_response, TopicKind.LOOKUP_RESPONSE, None),
    (lambda t: t.jobs_desired, TopicKind.JOBS_DESIRED, None),
    (lambda t: t.jobs_reported, TopicKind.JOBS_REPORTED, None),
    (lambda t: t.update_get, TopicKind.UPDATE_GET, None),
    (lambda t: t.update_data, TopicKind.UPDATE_DATA, None),
    (lambda t: t.claim_request, TopicKind.CLAIM_REQUEST, None),
    (lambda t: t.claim_response, TopicKind.CLAIM_RESPONSE, None),
]


@pytest.mark.parametrize(("build", "kind", "arg"), EVERY)
def test_every_topic_parses_back(build, kind, arg) -> None:
    topic = build(Topics("kiosk", "k-1"))
    parsed = parse("kiosk", topic)
    assert parsed is not None
    assert (parsed.kind, parsed.device, parsed.arg) == (kind, "k-1", arg)
    assert parse("other", topic) is None


def test_group_and_controller_topics_parse() -> None:
    t = Topics("kiosk", "k-1")
    assert parse("kiosk", t.group_cmd("lobby")) == parse("kiosk", "kiosk/group/lobby/cmd")
    group = parse("kiosk", t.group_cmd("lobby"))
    assert group is not None and (group.kind, group.device) == (TopicKind.GROUP_CMD, "lobby")
    ctl = parse("kiosk", t.controller_reply("ctl-1"))
    assert ctl is not None and (ctl.kind, ctl.device) == (TopicKind.CONTROLLER_REPLY, "ctl-1")


@pytest.mark.parametrize(
    "topic", ["kiosk", "kiosk/k1", "kiosk/k1/nope", "kiosk//status", "kiosk/k1/upload/a/b"]
)
def test_topics_outside_the_tree_do_not_parse(topic: str) -> None:
    assert parse("kiosk", topic) is None


def test_an_event_type_split_by_rabbitmq_still_parses() -> None:
    """RabbitMQ delivers ``events/ui.tap`` as ``events/ui/tap`` (tests/brokers)."""
    parsed = parse("kiosk", "kiosk/k1/events/ui/tap")
    assert parsed is not None and (parsed.kind, parsed.arg) == (TopicKind.EVENT, "ui/tap")


def test_filters_are_the_same_names_with_a_wildcard_device() -> None:
    every = Topics.anyone("kiosk")
    assert every.device == ANY
    assert every.status == "kiosk/+/status"
    assert every.events == "kiosk/+/events/#"
    assert every.uploads == "kiosk/+/upload/+"
    assert every.lookup_request == "kiosk/+/lookup/request"
    assert shared("ingest", every.status) == "$share/ingest/kiosk/+/status"
    with pytest.raises(ValueError, match="share group"):
        shared("a/b", every.status)
    with pytest.raises(ValueError, match="device id"):
        Topics("kiosk", "#")


# --- error codes and event types ------------------------------------------------------------

#: Calls whose first argument is an event type (the event sinks of the kiosk and the simulator).
_EVENT_SINKS = {"emit", "raise_event", "_sink", "_emit"}


def _code_params(tree: ast.AST) -> dict[str, set[int]]:
    """Functions, methods and classes of a module with a positional parameter ``code``
    (``_bad(code, message)``, ``_Refused(code, reason)``, ``_error(cid, name, code, message)``):
    name -> the argument positions, in a call, that carry an error code."""
    out: dict[str, set[int]] = {}

    def add(name: str, fn: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        params = [a.arg for a in fn.args.posonlyargs + fn.args.args]
        if "code" in params:
            bound = 1 if params[0] in ("self", "cls") else 0
            out.setdefault(name, set()).add(params.index("code") - bound)

    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            add(node.name, node)
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    add(node.name, item)
    return out


def _strings(node: ast.AST | None, names: dict[str, str] | None = None) -> list[str]:
    """The string literals a value can take (``"a"``, ``"a" if c else "b"``, or ``NAME`` of a
    module-level ``NAME = "a"``)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _strings(node.body, names) + _strings(node.orelse, names)
    if isinstance(node, ast.Name) and names and node.id in names:
        return [names[node.id]]
    return []


def _constants(tree: ast.Module) -> dict[str, str]:
    """A module's top-level ``NAME = "literal"`` constants."""
    out = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id.isupper()
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            out[node.targets[0].id] = node.value.value
    return out


def wire_literals(root: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(code, where) and (event type, where) for every literal code and event type."""
    codes: list[tuple[str, str]] = []
    events: list[tuple[str, str]] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        code_params = _code_params(tree)
        consts = _constants(tree)
        for node in ast.walk(tree):
            where = f"{rel}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    if kw.arg == "code":
                        codes += [(s, where) for s in _strings(kw.value, consts)]
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                first = node.args[0] if node.args else None
                if name in _EVENT_SINKS:
                    events += [(s, where) for s in _strings(first)]
                for i in code_params.get(name, ()):
                    if i < len(node.args):
                        codes += [(s, where) for s in _strings(node.args[i], consts)]
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if (isinstance(t, ast.Name) and t.id == "code") or (
                        isinstance(t, ast.Attribute) and t.attr == "code"
                    ):
                        codes += [(s, where) for s in _strings(node.value)]
            elif isinstance(node, ast.Dict):
                for k, v in zip(node.keys, node.values, strict=True):
                    if isinstance(k, ast.Constant) and k.value == "code":
                        codes += [(s, where) for s in _strings(v)]
    return codes, events


def test_every_error_code_and_event_type_is_a_member() -> None:
    codes, events = wire_literals(ROOT / "appliance")
    # The scan sees the code base (codes are written as members now, issue 13: few literals left).
    assert len(events) > 10
    bad = [f"{where}: code {c!r}" for c, where in codes if c not in set(ErrorCode)]
    bad += [f"{where}: event {e!r}" for e, where in events if e not in set(EventType)]
    assert bad == [], (
        "add the code or event type to appliance/protocol/codes.py (with its meaning), "
        "then run `appliance schemas --out docs/schemas`:\n" + "\n".join(bad)
    )


def test_the_code_scan_finds_an_unknown_code(tmp_path: Path) -> None:
    (tmp_path / "x.py").write_text(
        "class E(Exception):\n    code = 'no_such_code'\n\n\n"
        "def f(sink, ok):\n"
        "    sink.emit('no.such.event', {})\n"
        "    raise E('m', code='busy' if ok else 'also_not_a_code')\n\n\n"
        "def _bad(code, message):\n    return E(message, code=code)\n\n\n"
        "X = _bad('third_bad_code', 'm')\n"
        "FOURTH = 'fourth_bad_code'\n"
        "Y = E('m', code=FOURTH)\n\n\n"
        "def _error(cid, name, code, message):\n    return {'code': code}\n\n\n"
        "Z = _error(None, None, 'fifth_bad_code', 'm')\n"
    )
    codes, events = wire_literals(tmp_path)
    assert {c for c, _ in codes} == {
        "no_such_code",
        "busy",
        "also_not_a_code",
        "third_bad_code",
        "fourth_bad_code",
        "fifth_bad_code",
    }
    assert [e for e, _ in events] == ["no.such.event"]


def test_every_member_has_a_meaning() -> None:
    assert set(ERROR_MEANINGS) == set(ErrorCode)
    assert set(EVENT_MEANINGS) == set(EventType)
    assert all(m and r for m, r in ERROR_MEANINGS.values())


def test_a_hand_edited_code_table_is_stale(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "docs" / "schemas", tmp_path / "schemas")
    doc = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    assert "| `busy` |" in doc and "| `card.inserted` |" in doc
    (tmp_path / "protocol.md").write_text(doc, encoding="utf-8")
    assert schemas.check(tmp_path / "schemas") == []
    (tmp_path / "protocol.md").write_text(doc.replace("| `busy` |", "| `bussy` |"))
    assert schemas.check(tmp_path / "schemas") == ["../protocol.md"]
    schemas.write(tmp_path / "schemas")
    assert (tmp_path / "protocol.md").read_text(encoding="utf-8") == doc


def test_only_make_client_constructs_a_paho_client() -> None:
    """Every paho user goes through mqttclient.make_client (protocol version, TLS, TCP options
    in one place)."""
    sites = []
    for path in sorted((ROOT / "appliance").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "Client"
                and ast.unparse(node.func.value) in ("paho", "mqtt", "paho.mqtt.client")
            ):
                sites.append(f"{path.relative_to(ROOT).as_posix()}:{node.lineno}")
    assert len(sites) == 1 and sites[0].startswith("appliance/mqttclient.py:"), sites


def test_one_package_codec_and_one_manifest_model() -> None:
    """The enrollment package's container and chunk framing is unpacked in one place, the
    contract's codec (appliance/protocol/package.py); the kiosk re-exports it, the centre wraps
    it; both ends build and parse the manifest with the contract's ``Manifest``."""
    from appliance.central import package as centre
    from appliance.enrollment import package as kiosk
    from appliance.protocol import package as contract

    assert kiosk.encode_container is contract.encode_container
    assert kiosk.encode_chunk is contract.encode_chunk
    assert centre.Container is kiosk.Container is contract.Container
    assert centre.Manifest is contract.Manifest
    assert (kiosk.MAGIC, kiosk.MANIFEST_TYPE) == (contract.MAGIC, contract.MANIFEST_TYPE)
    assert contract.Manifest.model_fields["typ"].annotation == Literal[kiosk.MANIFEST_TYPE]
    unpackers = []
    for path in sorted((ROOT / "appliance").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.FunctionDef)
                and node.name in ("decode_container", "decode_chunk")
                and "unpack_from" in ast.unparse(node)
            ):
                unpackers.append(f"{path.relative_to(ROOT).as_posix()}::{node.name}")
    assert unpackers == [
        "appliance/protocol/package.py::decode_container",
        "appliance/protocol/package.py::decode_chunk",
    ]
    session = (ROOT / "appliance/enrollment/session.py").read_text(encoding="utf-8")
    assert "Manifest.model_validate(" in session


# --- rooms whose error codes are all members ------------------------------------------------

#: Every room under appliance/ writes its error codes as ``ErrorCode`` members, never as string
#: literals (issue 13). Paths that may hold literals while they are converted go here (none now).
NOT_CONVERTED: tuple[str, ...] = ()


def _codeish(node: ast.AST) -> bool:
    """An expression that holds an error code: ``code``, ``exc.code``, ``err["code"]``..."""
    text = ast.unparse(node)
    return text == "code" or text.endswith((".code", "_code", "['code']"))


def _every_string(node: ast.AST | None) -> list[str]:
    """String literals of a value, also inside ``a or "b"`` and tuples/sets/lists."""
    if isinstance(node, ast.BoolOp):
        return [s for v in node.values for s in _every_string(v)]
    if isinstance(node, ast.Tuple | ast.Set | ast.List):
        return [s for e in node.elts for s in _every_string(e)]
    return _strings(node)


def _dataclass_code_fields(tree: ast.AST) -> dict[str, int]:
    """A module's dataclasses with a ``code`` field: name -> its position in ``__init__``
    (``Verdict("refused", "token_used", ...)``). Their success outcomes (``ok``) are no error
    codes, so only members of ``ErrorCode`` written as literals count."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(
            "dataclass" in ast.unparse(d) for d in node.decorator_list
        ):
            fields = [
                item.target.id
                for item in node.body
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
            ]
            if "code" in fields:
                out[node.name] = fields.index("code")
    return out


def room_literals(root: Path) -> list[str]:
    """Error codes written as string literals in the converted rooms under ``root``: what
    :func:`wire_literals` finds, plus comparisons with a code (``exc.code == "busy"``),
    defaults of a ``code`` parameter, ``x or "code"``, ``getattr(exc, "code", "usage")`` and
    the module constants named ``CODES`` or ``*_CODES``."""
    codes, _ = wire_literals(root)
    hits = [f"{where}: {c!r}" for c, where in codes]
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        positional = _dataclass_code_fields(tree)
        for node in ast.walk(tree):
            found: list[str] = []
            if isinstance(node, ast.Call) and ast.unparse(node.func) in positional:
                i = positional[ast.unparse(node.func)]
                found = _strings(node.args[i]) if i < len(node.args) else []
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                if any(_codeish(s) for s in sides):
                    found = [s for side in sides for s in _every_string(side)]
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = node.args.posonlyargs + node.args.args
                defaults = dict(zip(reversed(args), reversed(node.args.defaults), strict=False))
                defaults |= dict(zip(node.args.kwonlyargs, node.args.kw_defaults, strict=True))
                found = [s for a, d in defaults.items() if a.arg == "code" for s in _strings(d)]
            elif isinstance(node, ast.Call) and ast.unparse(node.func) == "getattr":
                if len(node.args) == 3 and _strings(node.args[1]) == ["code"]:
                    found = _every_string(node.args[2])
            elif isinstance(node, ast.Call):
                found += [
                    s
                    for kw in node.keywords
                    if kw.arg == "code" and isinstance(kw.value, ast.BoolOp)
                    for s in _every_string(kw.value)
                ]
            elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id.endswith("CODES") for t in node.targets
            ):
                found = _every_string(node.value)
            hits += [f"{rel}:{node.lineno}: {s!r}" for s in found if s in set(ErrorCode)]
    return sorted({h for h in hits if not h.startswith(NOT_CONVERTED)})


def test_converted_rooms_write_every_error_code_as_a_member() -> None:
    hits = room_literals(ROOT / "appliance")
    assert hits == [], "write these codes as ErrorCode members:\n" + "\n".join(hits)


def test_the_room_scan_finds_a_literal_code_in_every_room(tmp_path: Path) -> None:
    for room in ("trust", "agent"):
        (tmp_path / room).mkdir()
    (tmp_path / "trust" / "x.py").write_text(
        "from appliance.protocol.codes import ErrorCode\n\n\n"
        "def f(exc, code='bad_signature'):\n"
        "    if exc.code in ('busy', ErrorCode.TIMEOUT):\n"
        "        raise E('m', code=exc.code or 'command_failed')\n"
        "    raise E('m', code=ErrorCode.BUSY)\n\n\n"
        "ERROR_CODES = ('replayed', ErrorCode.EXPIRED)\n"
        "CODES = ('cert_revoked',)\n"
        "C = getattr(exc, 'code', 'usage')\n"
        "D = {'code': 'expired', 'status': 'busy'}\n\n\n"
        "@dataclass(frozen=True)\nclass V:\n    status: str\n    code: str\n\n\n"
        "W = [V('refused', 'denied'), V('approved', 'ok')]\n"
    )
    (tmp_path / "agent" / "x.py").write_text("R = E('m', code='timeout')\n")
    hits = room_literals(tmp_path)
    assert [h for h in hits if not h.startswith("trust/x.py:")] == ["agent/x.py:1: 'timeout'"]
    hits = [h for h in hits if h.startswith("trust/x.py:")]
    assert sorted(h.split(": ", 1)[1] for h in hits) == [
        "'bad_signature'",
        "'busy'",
        "'cert_revoked'",
        "'command_failed'",
        "'denied'",
        "'expired'",
        "'replayed'",
        "'usage'",
    ]


# --- the reply: rendered by the kiosk, parsed by the fleet tools ---------------------------


def test_the_kiosk_renders_replies_with_the_contracts_model() -> None:
    """One reply model for both ends: the dispatcher's ``CommandReply`` is
    ``protocol.messages.ReplyMessage``, no copy that could drift (tests/core/test_dispatch.py
    parses every reply the dispatcher publishes with it)."""
    from appliance import dispatch
    from appliance.protocol.messages import ErrorBody, ReplyMessage

    assert dispatch.CommandReply is ReplyMessage
    assert dispatch.ErrorBody is ErrorBody
