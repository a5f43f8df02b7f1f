"""Fixtures for the chip encoder: one private pcscd + vpcd stack per test session (socket
activation, vsmartcard's vpcd), a throw-away CSCA/DS, an issuance package with a ~20 KB
portrait, and an emulated blank card per test. No fixed sleeps: every wait is a condition
(SCardGetStatusChange, an event, a thread join) with a deadline."""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.drivers.card.config import CardConfig
from appliance.drivers.card.emulator import EmrtdApplet, Faults, VpcdCardEmulator
from appliance.drivers.card.profile import CardProfile, load_profile
from appliance.drivers.card.teststack import SOCKET_ENV, PcscTestStack
from appliance.lds import files, issuance, mrz, testpki

# A consistent CCCD citizen (the kiosk checks it, docs/card.md "Citizen data"): HCMC (079), a
# woman born in the 1900s (1), in 1990 (90); issued 2025 at 35, so valid to her 40th birthday.
DOC = "079190001234"
BIRTH = "900101"
EXPIRY = "300101"


@pytest.fixture(scope="session")
def pcsc_stack() -> Iterator[PcscTestStack]:
    stack = PcscTestStack().start()
    # libpcsclite reads the socket path once per process, at its first call: prime it, then
    # take the variable out again so other suites' subprocesses do not inherit our stack.
    saved = os.environ.get(SOCKET_ENV)
    stack.export_env()
    from appliance.drivers.card.link import PcscLink

    link = PcscLink()
    link.establish()
    link.close()
    if saved is None:
        os.environ.pop(SOCKET_ENV, None)
    else:
        os.environ[SOCKET_ENV] = saved
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def profile() -> CardProfile:
    return load_profile("cccd-applet")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[testpki.TestPki, dict[str, Path]]:
    p = testpki.make_test_pki()
    return p, testpki.write_test_pki(p, tmp_path_factory.mktemp("pki"))


def face_record(size: tuple[int, int] = (360, 450), quality: int = 55) -> bytes:
    """A 19794-5 record around a JPEG of a public-domain portrait bundled with scikit-image."""
    from PIL import Image
    from skimage import data as skdata

    img = Image.fromarray(skdata.astronaut()).resize(size)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return files.face_record_from_jpeg(buf.getvalue(), *size)


def td1(doc: str = DOC) -> mrz.Td1:
    return mrz.Td1(doc, BIRTH, "F", EXPIRY, "Nguyễn", "Thị Minh Khai")


def dg13(doc: str = DOC) -> files.Dg13:
    return files.Dg13(
        personal_id=doc,
        full_name="Nguyễn Thị Minh Khai",
        date_of_birth="01/01/1990",
        sex="Nữ",
        nationality="Việt Nam",
        ethnicity="Kinh",
        religion="Không",
        place_of_origin="Phường Bến Nghé, Quận 1, TP. Hồ Chí Minh",
        permanent_residence="12 Lê Lợi, Phường Bến Nghé, Quận 1, TP. Hồ Chí Minh",
        identifying_marks="Nốt ruồi cách 2cm trên đầu mày trái",
        date_of_issue="01/01/2025",
        date_of_expiry="01/01/2030",
        father="Nguyễn Văn Bình",
        mother="Trần Thị Hoa",
        old_id_number="025123456",
    )


@pytest.fixture(scope="session")
def face() -> bytes:
    return face_record()


@pytest.fixture(scope="session")
def package(pki: tuple[testpki.TestPki, dict[str, Path]], face: bytes) -> issuance.IssuancePackage:
    p, _ = pki
    return issuance.build_issuance_package(
        package_id="pkg-0001",
        mrz=td1(),
        dg13=dg13(),
        face_records=[face],
        ds_key=p.ds_key,
        ds_cert=p.ds_cert,
    )


class Events:
    """An EventSink that records and lets a test wait for an event."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self._cond = threading.Condition()

    def __call__(self, kind: str, data: dict[str, Any], **_kw: Any) -> None:
        with self._cond:
            self.items.append((kind, data))
            self._cond.notify_all()

    def types(self) -> list[str]:
        with self._cond:
            return [k for k, _ in self.items]

    def wait_for(self, kind: str, timeout: float = 10.0, count: int = 1) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [d for k, d in self.items if k == kind]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {kind!r} event within {timeout} s: {self.items}")
                self._cond.wait(left)


@pytest.fixture
def events() -> Events:
    return Events()


def wait_card_state(stack: PcscTestStack, present: bool, timeout: float = 10.0) -> None:
    """Wait (SCardGetStatusChange, no sleeping) until slot 0 shows a card / no card."""
    from smartcard import scard

    from appliance.drivers.card.link import PcscLink

    link = PcscLink()
    try:
        deadline = time.monotonic() + timeout
        known = scard.SCARD_STATE_UNAWARE
        while True:
            left = int(max(0.0, deadline - time.monotonic()) * 1000)
            try:
                state, _ = link.card_state(stack.reader_name, left, known)
            except Exception as exc:
                raise AssertionError(f"card never became present={present}") from exc
            if bool(state & scard.SCARD_STATE_PRESENT) == present:
                return
            if left <= 0:
                raise AssertionError(f"card never became present={present}")
            known = state & ~scard.SCARD_STATE_CHANGED
    finally:
        link.close()


@pytest.fixture
def insert_card(
    pcsc_stack: PcscTestStack, profile: CardProfile
) -> Iterator[Callable[..., VpcdCardEmulator]]:
    """Insert an emulated blank card (optionally with faults); removed after the test."""
    made: list[VpcdCardEmulator] = []

    def insert(
        faults: Faults | None = None, applet: EmrtdApplet | None = None, wait: bool = True
    ) -> VpcdCardEmulator:
        emu = VpcdCardEmulator(
            applet or EmrtdApplet(profile), port=pcsc_stack.vpcd_port, faults=faults
        ).start()
        made.append(emu)
        if wait:
            wait_card_state(pcsc_stack, True)
        return emu

    yield insert
    for emu in made:
        emu.stop()
    if made:
        wait_card_state(pcsc_stack, False)


@pytest.fixture
def card_config(pki: tuple[testpki.TestPki, dict[str, Path]]) -> CardConfig:
    _, paths = pki
    return CardConfig(trust_bundle=paths["csca_cert"], card_wait_s=10.0)


@pytest.fixture
def make_encoder(
    pcsc_stack: PcscTestStack, card_config: CardConfig, events: Events
) -> Iterator[Callable[..., Any]]:
    from appliance.drivers.card.pcsc import PcscEncoder

    made: list[PcscEncoder] = []

    def make(**overrides: Any) -> PcscEncoder:
        cfg = card_config.model_copy(update=overrides)
        enc = PcscEncoder(cfg, events)
        enc.start()
        made.append(enc)
        return enc

    yield make
    for enc in made:
        enc.stop()
