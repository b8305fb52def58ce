"""API keys: the shown-once token, the hashed store, the verification cache, revocation across processes."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from metrics.api import keys as keys_module
from metrics.api.auth import Role
from metrics.api.keys import (
    BOOTSTRAP_NAME,
    KEYS_FILE,
    KeyStore,
    close_key_stores,
    create_key,
    ensure_admin_key,
    key_store,
    list_keys,
    parse_token,
    revoke_key,
)
from metrics.errors import AuthenticationError, ValidationError
from metrics.settings import Settings

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _fresh_stores() -> Iterator[None]:
    yield
    close_key_stores()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def kdf_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count the scrypt derivations (the expensive part of verifying a key)."""
    calls: list[str] = []
    real = keys_module._kdf

    def counting(secret: str, salt: bytes, params: str) -> bytes:
        calls.append(params)
        return real(secret, salt, params)

    monkeypatch.setattr(keys_module, "_kdf", counting)
    return calls


def test_a_created_key_has_the_documented_shape_and_authenticates_with_its_role(settings: Settings) -> None:
    key_id, token = create_key(settings, "ingest-bot", "writer")
    assert token.startswith(f"mk_{key_id}_")
    assert parse_token(token) == (key_id, token.split("_", 2)[2])
    principal = key_store(settings).verify(token)
    assert (principal.name, principal.role, principal.key_id, principal.source) == (
        "ingest-bot",
        Role.WRITER,
        key_id,
        "key",
    )


def test_only_a_salted_hash_is_stored_and_the_file_is_private(settings: Settings) -> None:
    _, first = create_key(settings, "a", "reader")
    _, second = create_key(settings, "b", "reader")
    path = settings.state_dir / KEYS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = b"".join(p.read_bytes() for p in path.parent.glob(f"{KEYS_FILE}*"))
    for token in (first, second):
        assert token.split("_", 2)[2].encode() not in raw
        assert token.encode() not in raw
    with sqlite3.connect(path) as db:
        salts = [row[0] for row in db.execute("SELECT salt FROM api_keys")]
        kdfs = {row[0] for row in db.execute("SELECT kdf FROM api_keys")}
    assert len(set(salts)) == 2  # one salt per key
    assert kdfs == {"scrypt:n=16384,r=8,p=1"}


def test_a_verified_key_is_cached_so_the_kdf_runs_once_per_process(settings: Settings, kdf_calls: list[str]) -> None:
    _, token = create_key(settings, "bot", "writer")
    kdf_calls.clear()
    store = key_store(settings)
    assert store.cached(token) is None  # not verified yet in this process
    for _ in range(50):
        assert store.verify(token).role is Role.WRITER
    assert store.cached(token) is not None
    assert len(kdf_calls) == 1


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"), "not valid"),  # right key id, wrong secret
        (lambda t: "mk_000000000000_" + t.split("_", 2)[2], "not valid"),  # unknown key id
        (lambda t: t.upper(), "malformed"),
        (lambda t: t.split("_", 2)[0] + "_" + t.split("_", 2)[1], "malformed"),  # no secret
        (lambda t: t + "\n", "malformed"),
        (lambda t: "", "malformed"),
    ],
)
def test_wrong_or_malformed_keys_are_refused_without_echoing_them(
    settings: Settings, mutate: Callable[[str], str], reason: str
) -> None:
    _, token = create_key(settings, "bot", "admin")
    store = key_store(settings)
    store.verify(token)  # the right token is cached: a near miss must still fail
    wrong = mutate(token)
    with pytest.raises(AuthenticationError) as caught:
        store.verify(wrong)
    assert reason in str(caught.value)
    secret_part = token.split("_", 2)[2]
    assert secret_part[:8] not in str(caught.value)


def test_a_near_miss_does_not_hit_the_cache(settings: Settings) -> None:
    _, token = create_key(settings, "bot", "admin")
    store = key_store(settings)
    store.verify(token)
    assert store.cached(token[:-1] + ("x" if token[-1] != "x" else "y")) is None


def test_list_shows_every_key_without_secrets_and_marks_revoked_ones(settings: Settings) -> None:
    ids = [create_key(settings, f"k{i}", role)[0] for i, role in enumerate(("reader", "writer", "admin"))]
    revoke_key(settings, ids[1])
    listed = list_keys(settings)
    assert [k.key_id for k in listed] == ids
    assert [k.role for k in listed] == [Role.READER, Role.WRITER, Role.ADMIN]
    assert [k.revoked for k in listed] == [False, True, False]
    assert all("secret" not in k.to_dict() and "hash" not in k.to_dict() for k in listed)


def test_last_used_is_recorded_on_first_use(settings: Settings) -> None:
    _, token = create_key(settings, "bot", "reader")
    assert list_keys(settings)[0].last_used_at is None
    key_store(settings).verify(token)
    assert list_keys(settings)[0].last_used_at is not None


def test_revocation_stops_a_cached_key_at_once_in_the_same_process(settings: Settings) -> None:
    key_id, token = create_key(settings, "bot", "writer")
    store = key_store(settings)
    store.verify(token)
    revoke_key(settings, key_id)
    assert store.cached(token) is None
    with pytest.raises(AuthenticationError, match="revoked"):
        store.verify(token)


def test_revocation_by_another_connection_stops_a_cached_key_at_once(settings: Settings) -> None:
    key_id, token = create_key(settings, "bot", "writer")
    server = key_store(settings)
    server.verify(token)
    other = KeyStore(settings.state_dir / KEYS_FILE)  # another process's connection
    try:
        other.revoke(key_id)
    finally:
        other.close()
    assert server.cached(token) is None  # no waiting: data_version tells at the next request


@pytest.mark.integration
def test_revocation_by_the_cli_in_another_process_stops_a_cached_key(settings: Settings) -> None:
    key_id, token = create_key(settings, "bot", "writer")
    _, keep = create_key(settings, "other", "writer")
    server = key_store(settings)
    server.verify(token)
    server.verify(keep)
    done = subprocess.run(
        [sys.executable, "-m", "metrics", "--data-dir", str(settings.data_dir), "keys", "revoke", key_id],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert server.cached(token) is None
    assert server.cached(keep) is not None  # other keys stay cached


def test_revoking_an_unknown_key_names_it(settings: Settings) -> None:
    with pytest.raises(ValidationError, match="'nope': no such key"):
        revoke_key(settings, "nope")


def test_revoking_twice_keeps_the_first_revocation_time(settings: Settings) -> None:
    key_id, _ = create_key(settings, "bot", "writer")
    first = revoke_key(settings, key_id).revoked_at
    assert revoke_key(settings, key_id).revoked_at == first


@pytest.mark.parametrize(
    ("name", "role", "message"),
    [
        ("bot", "root", "not a role"),
        ("", "reader", "name"),
        ("x" * 101, "reader", "name"),
        ("bad\nname", "reader", "name"),
        ("-leading", "reader", "name"),
    ],
)
def test_bad_names_and_roles_are_refused(settings: Settings, name: str, role: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        create_key(settings, name, role)


def test_ensure_admin_key_creates_the_bootstrap_key_once(settings: Settings) -> None:
    token = ensure_admin_key(settings)
    assert token is not None
    assert key_store(settings).verify(token).role is Role.ADMIN
    assert ensure_admin_key(settings) is None
    assert [(k.name, k.role) for k in list_keys(settings)] == [(BOOTSTRAP_NAME, Role.ADMIN)]


def test_ensure_admin_key_respects_an_existing_admin_and_replaces_a_revoked_one(settings: Settings) -> None:
    key_id, _ = create_key(settings, "ops", "admin")
    assert ensure_admin_key(settings) is None
    revoke_key(settings, key_id)
    assert ensure_admin_key(settings) is not None


def test_concurrent_ensure_admin_key_creates_exactly_one(settings: Settings) -> None:
    path = settings.state_dir / KEYS_FILE
    KeyStore(path).close()  # the schema exists before the race
    results: list[str | None] = []
    lock = threading.Lock()

    def bootstrap() -> None:
        store = KeyStore(path)  # one connection each, as separate processes would have
        try:
            created = store.create(BOOTSTRAP_NAME, Role.ADMIN, only_if_no_admin=True)
        finally:
            store.close()
        with lock:
            results.append(None if created is None else created[1])

    threads = [threading.Thread(target=bootstrap) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 4
    assert sum(r is not None for r in results) == 1
    assert len(list_keys(settings)) == 1
