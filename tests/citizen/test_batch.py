"""Directory batches for a day offline, without a broker: the directory's core signs the chunks
of a batch, the kiosk's client verifies and stores them (0600), and lookups fall back to the
batch when the directory cannot be reached, until the batch expires. Real keys, signatures and
SQLite; the broker path is the one lookups use (tests/central/test_lookup_e2e.py)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import stat
import time
from pathlib import Path

import pytest

from appliance.central.citizens import synthetic_citizen
from appliance.central.directory import BATCH_CHUNK_RECORDS, DirectoryCore, DirectoryStore
from appliance.citizen.batch import CitizenBatch
from appliance.citizen.lookup import LookupClient, LookupFailed
from appliance.devtools.fleetkit import FleetKit
from appliance.errors import StoreError
from appliance.trust.keys import load_public_key

DEV = "kiosk-bt1"
TODAY = dt.date(2026, 12, 3)
N = 450  # three chunks


class Kiosk:
    """The client and the directory's core wired to each other; ``online`` cuts the link."""

    def __init__(self, kit: FleetKit, store: DirectoryStore, state: Path, key: str) -> None:
        self.online = True
        self.now = time.time()
        self.batch = CitizenBatch(state, now=lambda: self.now)
        self.signed_times: list[tuple[float, float]] = []
        self.tamper = False
        self.core = DirectoryCore(store, kit.signer(key), self._to_kiosk)
        self.client = LookupClient(
            prefix="kiosk",
            device_id=DEV,
            publish=self._to_directory,
            roots=[load_public_key(kit.root_pub)],
            batch=self.batch,
            on_signed_time=lambda t, rt: self.signed_times.append((t, rt)),
        )

    def _to_kiosk(self, _topic: str, payload: bytes, _corr: bytes | None) -> bool:
        if self.tamper:  # the last chunk's body altered after signing
            env = json.loads(payload)
            body = json.loads(base64.b64decode(env["body"]))
            if body.get("index") == body.get("count", 0) - 1:
                body["records"][0]["citizen"]["full_name"] = "Nguyễn Văn Giả"
                env["body"] = base64.b64encode(json.dumps(body).encode()).decode()
                payload = json.dumps(env).encode()
        self.client.on_message(self.client.response_topic, payload)
        return True

    def _to_directory(self, topic: str, body: bytes, rt: str, corr: bytes) -> bool:
        if not self.online:
            return False
        self.core.handle(topic, body, response_topic_=rt, correlation_data=corr)
        return True


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> DirectoryStore:
    store = DirectoryStore(tmp_path_factory.mktemp("dir") / "directory.sqlite")
    store.load({f"CIT-B{i:04d}": synthetic_citizen(f"CIT-B{i:04d}", today=TODAY) for i in range(N)})
    return store


def test_create_list_and_select_by_province_residence_or_numbers(
    directory: DirectoryStore,
) -> None:
    seen: list[tuple[int, int]] = []
    everyone = [directory.find_ref(f"CIT-B{i:04d}") for i in range(N)]
    provinces = sorted({c["personal_id"][:3] for c in everyone if c})
    info = directory.create_batch(
        "bt-all", provinces=provinces, valid_s=86400, progress=lambda d, t: seen.append((d, t))
    )
    assert info["total"] == N and seen[-1] == (N, N)
    one = everyone[0]
    assert one is not None
    by_number = directory.create_batch("bt-one", numbers=[one["personal_id"]], valid_s=60)
    assert by_number["total"] == 1
    street = one["permanent_residence"].split(",")[0].split(" ", 1)[1]
    by_place = directory.create_batch("bt-street", residence=street, valid_s=60)
    assert 1 <= by_place["total"] < N
    assert [b["batch_id"] for b in directory.batches()][:3] == ["bt-all", "bt-one", "bt-street"]
    for kwargs, code in [
        ({"numbers": ["001099999999"]}, "citizen_unknown"),
        ({"provinces": ["999"]}, "batch_empty"),
    ]:
        with pytest.raises(StoreError) as info_err:
            directory.create_batch("bt-bad", valid_s=60, **kwargs)  # type: ignore[arg-type]
        assert info_err.value.code == code
    with pytest.raises(StoreError) as again:
        directory.create_batch("bt-one", numbers=[one["personal_id"]], valid_s=60)
    assert again.value.code == "batch_exists"


def test_fetch_store_and_answer_offline_from_the_batch_until_it_expires(
    fleet_kit: FleetKit, directory: DirectoryStore, tmp_path: Path
) -> None:
    if directory.batch_info("bt-all") is None:
        test_create_list_and_select_by_province_residence_or_numbers(directory)
    k = Kiosk(fleet_kit, directory, tmp_path, "directory")
    summary = k.client.fetch_batch("bt-all", timeout_s=5)
    assert summary["total"] == N and summary["batch_id"] == "bt-all"
    assert k.core.stats["batches"] == 1
    assert -(-N // BATCH_CHUNK_RECORDS) == 3
    path = tmp_path / "citizen-batch.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert k.signed_times and k.signed_times[0][1] == float("inf")  # floor only, not an anchor
    citizen = directory.find_ref("CIT-B0007")
    assert citizen is not None
    # online: the directory answers
    assert k.client.lookup(citizen["personal_id"], timeout_s=2).source == "directory"
    # offline: the batch answers, with its signed time
    k.online = False
    res = k.client.lookup(citizen["personal_id"], timeout_s=2)
    assert res.source == "batch" and res.status == "found"
    assert res.citizen is not None and res.citizen["citizen_ref"] == "CIT-B0007"
    assert res.issued_at == summary["issued_at"]
    assert res.to_dict()["source"] == "batch"
    assert k.client.looked_up("CIT-B0007") == res.citizen  # corrections can be checked
    with pytest.raises(LookupFailed) as unknown:
        k.client.lookup("001099999999", timeout_s=2)
    assert unknown.value.code == "directory_offline"
    # a restart keeps it
    assert CitizenBatch(tmp_path, now=lambda: k.now).summary() is not None
    # the batch expires (judged with the kiosk's trusted time): gone, and deleted
    k.now = summary["expires_at"] + 1
    with pytest.raises(LookupFailed):
        k.client.lookup(citizen["personal_id"], timeout_s=2)
    assert not path.exists()


def test_a_tampered_chunk_or_a_key_without_the_directory_role_stores_nothing(
    fleet_kit: FleetKit, directory: DirectoryStore, tmp_path: Path
) -> None:
    if directory.batch_info("bt-all") is None:
        test_create_list_and_select_by_province_residence_or_numbers(directory)
    k = Kiosk(fleet_kit, directory, tmp_path, "directory")
    k.tamper = True
    with pytest.raises(LookupFailed) as bad:
        k.client.fetch_batch("bt-all", timeout_s=0.5)
    assert bad.value.code == "bad_signature"
    assert not (tmp_path / "citizen-batch.json").exists()
    k2 = Kiosk(fleet_kit, directory, tmp_path, "operator")
    with pytest.raises(LookupFailed) as role:
        k2.client.fetch_batch("bt-all", timeout_s=0.5)
    assert role.value.code == "forbidden_role"
    k3 = Kiosk(fleet_kit, directory, tmp_path, "directory")
    with pytest.raises(LookupFailed) as missing:
        k3.client.fetch_batch("bt-nothing", timeout_s=2)
    assert missing.value.code == "batch_not_found"
    assert k3.batch.summary() is None


def test_the_fleet_tool_creates_lists_and_shows_batches_saying_what_it_did(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from appliance.central import directorycli

    store = DirectoryStore(tmp_path / "directory.sqlite")
    store.load({f"CIT-T{i}": synthetic_citizen(f"CIT-T{i}", today=TODAY) for i in range(40)})
    province = store.find_ref("CIT-T0")["personal_id"][:3]  # type: ignore[index]
    numbers = tmp_path / "numbers.txt"
    numbers.write_text(store.find_ref("CIT-T1")["personal_id"] + "\n")  # type: ignore[index]
    home = ["--home", str(tmp_path)]
    argv = ["batch", "create", "bt-cli", "--province", province, "--numbers", str(numbers)]
    assert directorycli.main([*argv, *home]) == 0
    out = capsys.readouterr()
    assert "created batch bt-cli:" in out.out and "citizen(s) written" in out.err
    assert directorycli.main([*argv, *home]) == 2
    assert "batch_exists" in capsys.readouterr().err
    assert directorycli.main(["batch", "list", *home]) == 0
    assert "bt-cli:" in capsys.readouterr().out
    assert directorycli.main(["batch", "show", "bt-cli", "--records", *home]) == 0
    assert f"{province} 3" in capsys.readouterr().out
    assert directorycli.main(["batch", "show", "bt-none", *home]) == 1
    assert directorycli.main(["batch", "create", "bt-x", *home]) == 2
    assert "--province, --residence or --numbers" in capsys.readouterr().err
