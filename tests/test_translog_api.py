"""The transfer log over HTTP: checkpoints signed and consistent, proofs, entries by reader, bad input."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete

from connector.translog import merkle
from connector.translog.checkpoint import (
    Checkpoint,
    CheckpointError,
    log_verifier,
    parse_checkpoint,
    sign_checkpoint,
)
from connector.translog.models import LogCheckpointRow
from connector.translog.note import NoteError, NoteSigner, Verifier, open_note, parse_note
from identity.keys import generate_private_key
from tests.conftest import Participant
from tests.translog_helpers import append_refusals, introduce, peer_headers, refusal, rewrite_history

CHECKPOINT = LogCheckpointRow.__table__  # type: ignore[attr-defined]


def _b64(text: str) -> bytes:
    return base64.b64decode(text)


def _checkpoint(client: TestClient, participant: Participant) -> tuple[Checkpoint, str]:
    response = client.get("/log/checkpoint")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    opened = open_note(response.text, [log_verifier(participant.did, participant.core.key.public_key())])
    return parse_checkpoint(opened.note.text), response.text


def test_checkpoints_are_public_signed_and_grow_consistently(
    make_connector: Callable[..., Participant],
) -> None:
    city = make_connector("city")
    client = city.client()
    empty, _ = _checkpoint(client, city)
    assert (empty.origin, empty.size, empty.root) == (city.did, 0, merkle.EMPTY_ROOT)
    append_refusals(city.core.engine, 5)
    first, note = _checkpoint(client, city)
    assert first.size == 5
    assert _checkpoint(client, city)[1] == note  # unchanged log: the same signed note
    append_refusals(city.core.engine, 6, start=5)
    second, _ = _checkpoint(client, city)
    assert second.size == 11

    peer = make_connector("peer")
    introduce(city, peer)
    headers = peer_headers(peer.did, peer.core.key, city.did)
    proof = client.get("/log/proof/consistency?first=5&second=11", headers=headers).json()["proof"]
    merkle.verify_consistency(5, 11, [_b64(p) for p in proof], first.root, second.root)
    for index in (0, 4, 10):
        answer = client.get(
            f"/log/proof/inclusion?index={index}&size=11",
            headers=peer_headers(peer.did, peer.core.key, city.did),
        ).json()
        merkle.verify_inclusion(
            _b64(answer["leafHash"]), index, 11, [_b64(p) for p in answer["proof"]], second.root
        )
    by_hash = client.get(
        "/log/proof/inclusion",
        params={"leafHash": answer["leafHash"], "size": "11"},
        headers=peer_headers(peer.did, peer.core.key, city.did),
    ).json()
    assert by_hash["index"] == 10


def test_proof_and_entry_routes_need_a_peer_token(make_connector: Callable[..., Participant]) -> None:
    city = make_connector("city")
    append_refusals(city.core.engine, 3)
    client = city.client()
    for path in (
        "/log/entries?start=0&end=3",
        "/log/proof/inclusion?index=0&size=3",
        "/log/proof/consistency?first=1&second=3",
    ):
        assert client.get(path).status_code == 401


def test_entries_show_a_member_only_what_names_it(make_connector: Callable[..., Participant]) -> None:
    city, peer = make_connector("city"), make_connector("peer")
    introduce(city, peer)
    append_refusals(city.core.engine, 2)
    from connector.translog.store import append_entry

    with city.core.engine.begin() as conn:
        append_entry(conn, "refusal", refusal(7, counter_party=peer.did))
    client = city.client()
    page = client.get(
        "/log/entries?start=0&end=3", headers=peer_headers(peer.did, peer.core.key, city.did)
    ).json()
    assert page["treeSize"] == 3
    assert ["entry" in e for e in page["entries"]] == [False, False, True]
    assert page["entries"][2]["entry"]["counterParty"] == peer.did
    # The operator sees everything.
    full = client.get("/management/v3/transferlog/entries?start=0&end=3", headers=_api_headers(city)).json()
    assert all("entry" in e for e in full["entries"])
    leaf = merkle.leaf_hash(__import__("rfc8785").dumps(full["entries"][0]["entry"]))
    assert base64.b64encode(leaf).decode() == full["entries"][0]["leafHash"]


def _api_headers(participant: Participant) -> dict[str, str]:
    key = participant.settings.management_api_key
    assert key is not None
    return {"X-Api-Key": key.get_secret_value()}


BAD_QUERIES = [
    ("/log/proof/inclusion?index=-1&size=3", "index"),
    ("/log/proof/inclusion?index=3&size=3", "index"),
    ("/log/proof/inclusion?index=0&size=4", "size"),
    ("/log/proof/inclusion?index=0&size=99999999999999999999999", "size"),
    ("/log/proof/inclusion?index=abc&size=3", "index"),
    ("/log/proof/inclusion?size=3", "index"),
    ("/log/proof/inclusion?index=0&size=3&size=2", "size"),
    ("/log/proof/inclusion?leafHash=%%%&size=3", "leafHash"),
    ("/log/proof/consistency?first=0&second=3", "first"),
    ("/log/proof/consistency?first=3&second=2", "first"),
    ("/log/proof/consistency?first=1&second=9223372036854775807", "second"),
    ("/log/proof/consistency?first=1e3&second=3", "first"),
    ("/log/entries?start=2&end=2", "start"),
    ("/log/entries?start=0&end=4", "end"),
    ("/log/entries?start=0", "end"),
]


def test_bad_numbers_get_a_clear_400(make_connector: Callable[..., Participant]) -> None:
    city, peer = make_connector("city"), make_connector("peer")
    introduce(city, peer)
    append_refusals(city.core.engine, 3)
    client = city.client()
    for query, parameter in BAD_QUERIES:
        response = client.get(query, headers=peer_headers(peer.did, peer.core.key, city.did))
        assert response.status_code == 400, (query, response.text)
        body = response.json()
        assert body["parameter"] == parameter, (query, body)
        assert body["error"]


def test_a_page_is_bounded(make_connector: Callable[..., Participant]) -> None:
    city, peer = make_connector("city"), make_connector("peer")
    introduce(city, peer)
    append_refusals(city.core.engine, 1001, batch=1001)
    client = city.client()
    headers = _api_headers(city)
    assert (
        client.get("/management/v3/transferlog/entries?start=0&end=1001", headers=headers).status_code == 400
    )
    assert (
        len(
            client.get("/management/v3/transferlog/entries?start=1&end=1001", headers=headers).json()[
                "entries"
            ]
        )
        == 1000
    )


def test_a_log_whose_history_changed_or_shrank_is_never_signed(
    make_connector: Callable[..., Participant],
) -> None:
    city = make_connector("city")
    engine, key = city.core.engine, city.core.key
    append_refusals(engine, 6)
    signed = sign_checkpoint(engine, city.did, key)
    assert signed.checkpoint.size == 6
    append_refusals(engine, 3, start=6)
    # Someone with database access rewrites entry 2 and every hash above it.
    rewrite_history(engine, 2, "nothing to see here")
    with pytest.raises(CheckpointError, match="not consistent with signed checkpoint 6"):
        sign_checkpoint(engine, city.did, key)
    response = city.client().get("/log/checkpoint")
    assert response.status_code == 503
    assert "refusing to sign" in response.json()["error"]
    with engine.begin() as conn:  # as if entries had been deleted after checkpoint 20 was signed
        conn.execute(delete(CHECKPOINT))
        conn.execute(CHECKPOINT.insert().values(size=20, root=b"\x01" * 32, note="x", signed_at=0))
    with pytest.raises(CheckpointError, match="has 9 entries but checkpoint 20 was signed"):
        sign_checkpoint(engine, city.did, key)


def test_notes_ignore_unknown_keys_and_refuse_notes_without_a_known_signature() -> None:
    ours, stranger = generate_private_key(), generate_private_key()
    text = "example.org/log\n3\n" + base64.b64encode(b"\x07" * 32).decode() + "\n"
    signed_by_us = NoteSigner("example.org/log", ours).sign(text).line()
    signed_by_stranger = NoteSigner("stranger.example/key", stranger).sign(text).line()
    note = text + "\n" + signed_by_stranger + signed_by_us
    verifier = Verifier("example.org/log", 0x01, ours.public_key())
    assert open_note(note, [verifier]).verified_by == ("example.org/log",)
    with pytest.raises(NoteError, match="no signature from a known key"):
        open_note(text + "\n" + signed_by_stranger, [verifier])
    # A known key whose signature does not verify rejects the note.
    forged = text.replace("\n3\n", "\n4\n") + "\n" + signed_by_us
    with pytest.raises(NoteError, match="does not verify"):
        open_note(forged, [verifier])
    for bad in ("", "no newline", text, text + "\nnot a signature\n", text + "\n\u2014 name !!!\n"):
        with pytest.raises(NoteError):
            parse_note(bad)
