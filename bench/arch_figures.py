"""The architecture figures of docs/architecture.md, measured on the code as it stands.

* Modules a command's code runs in, from the dispatcher's ``handle`` to the reply handed back
  for publishing: a signed ``ping`` and a signed ``card.encode`` (on the private pcscd + vpcd
  stack with the emulated blank card), traced in-process with ``sys.setprofile`` on the calling
  thread and the dispatcher's ``cmd`` workers. The two broker ends (``agent/mqtt.py``, which
  turns paho's message into an ``Incoming`` and publishes the reply, and ``daemon.py``'s
  ``_route``) are added to the count: they run on the MQTT network thread, outside this trace.
* Times one command is parsed: every JSON decode (``json.loads``) and every pydantic
  validation of the request during that trace, per distinct document.
* Functions over complexity 15 (ruff's C901, ``noqa`` comments ignored), paho client set-ups,
  topic strings spelled outside the wire contract (``appliance/protocol/``; before it existed,
  ``appliance/agent/topics.py``), and error codes written as string literals (``code="..."``,
  ``code = "..."``, ``{"code": "..."}``, ``_bad("...", ...)``) rather than ``ErrorCode`` members,
  with how many distinct codes are not members of ``ErrorCode`` (the source text), and where
  they are, per room (the package under ``appliance/``, or the module at its top); and,
  apart, the members of ``ErrorCode`` written as literals in the other places the wire
  contract test counts (comparisons with a code, ``code`` defaults, ``CODES`` tuples...).

    .venv/bin/python bench/arch_figures.py
"""

from __future__ import annotations

import ast
import base64
import collections
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import ROOT, emit

# The broker ends of every command: on the MQTT network thread, outside the trace.
BROKER_ENDS = ("appliance/agent/mqtt.py", "appliance/daemon.py")


def digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:12]


class Tracer:
    """Which appliance modules run, and which documents are decoded, while ``on`` is set."""

    def __init__(self) -> None:
        self.on = False
        self.modules: set[str] = set()
        self.decodes: collections.Counter[str] = collections.Counter()
        self.heads: dict[str, str] = {}  # digest -> the document's first bytes
        self.validations: collections.Counter[str] = collections.Counter()

    def __call__(self, frame: Any, event: str, _arg: Any) -> None:
        if not self.on or event != "call":
            return
        th = threading.current_thread()
        if th is not threading.main_thread() and not th.name.startswith("cmd"):
            return
        path = frame.f_code.co_filename
        name = frame.f_code.co_name
        module = frame.f_globals.get("__name__", "")
        if module == "appliance" or module.startswith("appliance."):
            # By the frame's module, so dataclass-made methods count for their module too.
            file = sys.modules[module].__file__ or module
            self.modules.add("appliance/" + file.split("/appliance/", 1)[1])
        elif path.endswith("json/__init__.py") and name == "loads":
            doc = frame.f_locals.get("s")
            if isinstance(doc, bytes | str):
                raw = doc.encode() if isinstance(doc, str) else doc
                self.decodes[digest(raw)] += 1
                self.heads[digest(raw)] = raw[:48].decode(errors="replace")
        elif path.endswith("pydantic/main.py") and name.startswith("model_validate"):
            cls = frame.f_locals.get("cls")
            self.validations[getattr(cls, "__name__", "?")] += 1

    def install(self) -> None:
        sys.setprofile(self)
        threading.setprofile(self)


CONTRACT = ("appliance/protocol/", "appliance/agent/topics.py")


def _literal_strings(node: ast.AST | None, names: dict[str, str] | None = None) -> list[str]:
    """``"a"``, ``"a" if c else "b"``, or ``NAME`` of a module-level ``NAME = "a"``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _literal_strings(node.body, names) + _literal_strings(node.orelse, names)
    if isinstance(node, ast.Name) and names and node.id in names:
        return [names[node.id]]
    return []


def code_literals(tree: ast.AST) -> list[str]:
    """Error codes written as string literals in one module: ``code=`` arguments, ``code``
    assignments, ``"code"`` keys, and the ``code`` parameter's argument of the module's own
    functions, methods and classes that have one (``_bad(code, ...)``, ``_error(cid, name,
    code, message)``); a module constant ``NAME = "..."`` passed as the code counts too."""
    out: list[str] = []
    consts = {
        n.targets[0].id: n.value.value
        for n in getattr(tree, "body", [])
        if isinstance(n, ast.Assign)
        and len(n.targets) == 1
        and isinstance(n.targets[0], ast.Name)
        and n.targets[0].id.isupper()
        and isinstance(n.value, ast.Constant)
        and isinstance(n.value.value, str)
    }
    code_at: dict[str, set[int]] = {}

    def add(name: str, fn: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        params = [a.arg for a in fn.args.posonlyargs + fn.args.args]
        if "code" in params:
            bound = 1 if params[0] in ("self", "cls") else 0
            code_at.setdefault(name, set()).add(params.index("code") - bound)

    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            add(node.name, node)
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    add(node.name, item)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            out += [
                s
                for kw in node.keywords
                if kw.arg == "code"
                for s in _literal_strings(kw.value, consts)
            ]
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            for i in code_at.get(name, ()):
                if i < len(node.args):
                    out += _literal_strings(node.args[i], consts)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(getattr(t, "id", getattr(t, "attr", None)) == "code" for t in targets):
                out += _literal_strings(node.value)
        elif isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                if isinstance(k, ast.Constant) and k.value == "code":
                    out += _literal_strings(v)
    return out


def _every_literal(node: ast.AST | None) -> list[str]:
    """String literals of a value, also inside ``a or "b"`` and tuples/sets/lists."""
    if isinstance(node, ast.BoolOp):
        return [s for v in node.values for s in _every_literal(v)]
    if isinstance(node, ast.Tuple | ast.Set | ast.List):
        return [s for e in node.elts for s in _every_literal(e)]
    return _literal_strings(node)


def other_code_literals(tree: ast.AST) -> list[str]:
    """The other places a code can be written as a literal (what the converted-rooms test of
    tests/core/test_wire_contract.py also counts; only members of ``ErrorCode`` are kept by the
    caller): comparisons with a code (``exc.code == "busy"``), defaults of a ``code``
    parameter, ``code=x or "..."``, ``getattr(exc, "code", "...")`` and the module constants
    named ``CODES`` or ``*_CODES``."""
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            texts = [ast.unparse(s) for s in sides]
            if any(t == "code" or t.endswith((".code", "_code", "['code']")) for t in texts):
                out += [s for side in sides for s in _every_literal(side)]
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args.posonlyargs + node.args.args
            pairs = list(zip(reversed(args), reversed(node.args.defaults), strict=False))
            pairs += list(zip(node.args.kwonlyargs, node.args.kw_defaults, strict=True))
            out += [s for a, d in pairs if a.arg == "code" for s in _literal_strings(d)]
        elif isinstance(node, ast.Call) and ast.unparse(node.func) == "getattr":
            if len(node.args) == 3 and _literal_strings(node.args[1]) == ["code"]:
                out += _every_literal(node.args[2])
        elif isinstance(node, ast.Call):
            out += [
                s
                for kw in node.keywords
                if kw.arg == "code" and isinstance(kw.value, ast.BoolOp)
                for s in _every_literal(kw.value)
            ]
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id.endswith("CODES") for t in node.targets
        ):
            out += _every_literal(node.value)
    return out


def static_figures() -> dict[str, Any]:
    ruff = subprocess.run(
        [
            str(ROOT / ".venv/bin/ruff"),
            "check",
            "appliance",
            "--isolated",
            "--select",
            "C901",
            "--config",
            "lint.mccabe.max-complexity=15",
            "--output-format",
            "concise",
            "--ignore-noqa",
            "--exit-zero",
            "-q",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    over = [line.split(": ", 1)[1] for line in ruff.stdout.splitlines() if "C901" in line]
    paho_setups = []
    topic_strings = []
    codes: list[str] = []
    rooms: collections.Counter[str] = collections.Counter()
    others: list[tuple[str, str]] = []  # (literal, room) of other_code_literals
    topic_re = re.compile(r"""f["'][^"'\n]*\{[a-z_.]*prefix[a-z_.()]*\}/""")
    for path in sorted((ROOT / "appliance").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        found = code_literals(tree)
        codes += found
        if found:
            rooms[rel.split("/")[1].removesuffix(".py")] += len(found)
        for literal in other_code_literals(tree):
            others.append((literal, rel.split("/")[1].removesuffix(".py")))
        for n, line in enumerate(text.splitlines(), 1):
            if re.search(r"\bpaho\.Client\(|\bmqtt\.Client\(", line):
                paho_setups.append(f"{rel}:{n}")
            if not rel.startswith(CONTRACT) and topic_re.search(line):
                topic_strings.append(f"{rel}:{n}")
    by_module = collections.Counter(s.split(":", 1)[0] for s in topic_strings)
    try:
        from appliance.protocol.codes import ErrorCode

        members = {c.value for c in ErrorCode}
    except ImportError:  # before the enumeration existed (for a before/after run)
        members = set()
    other_rooms = collections.Counter(room for c, room in others if c in members)
    return {
        "functions_over_complexity_15": len(over),
        "over_15": over,
        "paho_client_setups": len(paho_setups),
        "paho_sites": paho_setups,
        "topic_strings_outside_contract": len(topic_strings),
        "topic_string_modules": len(by_module),
        "error_code_literals": len(codes),
        "error_code_literals_distinct": len(set(codes)),
        "codes_not_in_error_code_enum": sorted(set(codes) - members),
        "error_code_literals_by_room": dict(rooms.most_common()),
        "error_code_literals_elsewhere": sum(other_rooms.values()),
        "error_code_literals_elsewhere_by_room": dict(other_rooms.most_common()),
    }


def traced_figures() -> dict[str, Any]:
    from card_encode import build_package
    from nacl.signing import SigningKey

    from appliance import builtin
    from appliance.commands import CommandRegistry
    from appliance.config import AppConfig
    from appliance.daemon import build_verifier
    from appliance.dispatch import Dispatcher
    from appliance.drivers.card.commands import register as register_card
    from appliance.drivers.card.config import CardConfig
    from appliance.drivers.card.emulator import EmrtdApplet, VpcdCardEmulator
    from appliance.drivers.card.pcsc import PcscEncoder
    from appliance.drivers.card.profile import load_profile
    from appliance.drivers.card.teststack import PcscTestStack
    from appliance.lds.sod import load_trust_bundle
    from appliance.store import Store
    from appliance.trust.certs import FleetRoot, OperatorKey
    from appliance.trust.envelope import EnvelopeBuilder

    try:
        from appliance.inbound import Incoming
    except ImportError:  # before the message types moved (for a before/after run)
        from appliance.agent.mqtt import Incoming  # type: ignore[no-redef]

    tracer = Tracer()
    stack = PcscTestStack().start()
    stack.export_env()
    tmp = Path(tempfile.mkdtemp(prefix="arch-figures-"))
    results: dict[str, Any] = {}
    emu = None
    try:
        root = FleetRoot.create(tmp / "root")
        sk = SigningKey.generate()
        now = int(time.time())
        cert = root.issue(
            bytes(sk.verify_key),
            roles=("operator",),
            devices=("kiosk-001",),
            groups=(),
            not_after=now + 3600,
            issued_at=now - 60,
            name="figures",
        )
        builder = EnvelopeBuilder(OperatorKey(sk, cert))
        cfg = AppConfig.model_validate(
            {
                "device": {"id": "kiosk-001"},
                "trust": {"root_keys": [str(tmp / "root" / "root.pub")]},
            }
        )
        store = Store(tmp / "state")
        profile = load_profile("cccd-applet")
        pkg, csca = build_package(tmp)
        emu = VpcdCardEmulator(EmrtdApplet(profile), port=stack.vpcd_port).start()
        encoder = PcscEncoder(CardConfig(), lambda _t, _d: None)
        encoder.start()
        encoder.profile = profile  # set directly, as bench/card_encode.py does
        encoder.trust_anchors = load_trust_bundle(csca)
        registry = CommandRegistry()
        builtin.register(registry)
        register_card(registry, encoder)
        replies: dict[str, bytes] = {}
        done = threading.Event()

        def publish(
            _topic: str, body: bytes, *, qos: int = 1, correlation_data: bytes | None = None
        ) -> bool:
            del qos, correlation_data
            reply = json.JSONDecoder().decode(body.decode())  # not json.loads: not counted
            if "ok" in reply:  # the final reply (docs/protocol.md, "Replies")
                replies[reply["id"]] = body
                done.set()
            return True

        tracer.install()
        dispatcher = Dispatcher(
            registry,
            store,
            publish,
            "kiosk/kiosk-001/reply",
            emit=lambda *_a, **_k: None,
            max_payload=cfg.commands.max_payload_bytes,
            workers=cfg.commands.workers,
            verifier=build_verifier(cfg, store, registry),
        )
        deadline = time.monotonic() + 120
        while not encoder.status().get("card_present") and time.monotonic() < deadline:
            time.sleep(0.05)
        for name, args in (("ping", {}), ("card.encode", pkg.model_dump(mode="json"))):
            request = json.dumps({"id": f"fig-{name}", "cmd": name, "args": args}).encode()
            envelope = builder.build(name, request, "kiosk-001")
            body = base64.b64decode(json.loads(envelope)["body"])
            names = {digest(envelope): "envelope", digest(body): "body", digest(request): "request"}
            msg = Incoming("kiosk/kiosk-001/cmd", envelope, retained=False)
            tracer.modules.clear()
            tracer.decodes.clear()
            tracer.validations.clear()
            done.clear()
            tracer.on = True
            dispatcher.handle(msg)
            if not done.wait(120):
                raise SystemExit(f"no reply to {name}")
            tracer.on = False
            reply = json.loads(replies[f"fig-{name}"])
            if not reply.get("ok"):
                raise SystemExit(f"{name} failed: {reply}")
            modules = sorted(tracer.modules | set(BROKER_ENDS))
            results[name] = {
                "modules": len(modules),
                "module_list": modules,
                "json_decodes": sum(tracer.decodes.values()),
                "decodes_per_document": {
                    names.get(d, "other"): n for d, n in tracer.decodes.items()
                },
                "pydantic_validations": dict(tracer.validations),
                "other_documents": [
                    tracer.heads[d] for d in tracer.decodes if d not in names and d in tracer.heads
                ],
            }
        sys.setprofile(None)
        threading.setprofile(None)
        dispatcher.close()
        encoder.stop()
        store.close()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
        if emu is not None:
            emu.stop()
        stack.stop()
    return results


def main() -> int:
    out = {**static_figures(), **traced_figures()}
    emit("arch_figures", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
