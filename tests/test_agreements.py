"""Signed contract agreements: JCS canonical form, detached JWS, the agreement store, evidence bundles.

Every signature here is made with real Ed25519 keys; forgeries (alg none,
HS256 with the public key as secret, another key under the right kid) are
built byte by byte, as an attacker would.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session

from catalog.errors import ConflictError, InvalidInputError, NotFoundError
from catalog.jsonld import EDC_RESPONSE_CONTEXT
from catalog.queryspec import Criterion, QuerySpec, QuerySpecError
from contracts.agreements import (
    AgreementRecord,
    agreement_for_negotiation,
    agreement_to_edc,
    get_agreement,
    query_agreements,
    set_consumer_signature,
    store_agreement,
)
from contracts.evidence import BUNDLE_TYPE, EvidenceError, export_bundle, verify_bundle
from contracts.signing import (
    SIGNATURE_MEMBER,
    SignatureError,
    canonical_form,
    sign_agreement,
    signer_did,
    verify_agreement_signature,
)
from identity.keys import public_jwk
from identity.trustlist import add_member
from tests.conftest import private_key_of
from tests.helpers import assert_one_line_error, run_parallel

PROVIDER = "did:web:provider.example"
CONSUMER = "did:web:consumer.example"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_agreement(agreement_id: str = "urn:uuid:e8dc8655-44c2-46ef-b701-4cffdc2faa44", **changes: Any):
    agreement: dict[str, Any] = {
        "@id": agreement_id,
        "@type": "Agreement",
        "target": "urn:uuid:3dd1add4-4d2d-569e-d634-8394a8836d23",
        "timestamp": "2025-03-01T10:00:00Z",
        "assigner": PROVIDER,
        "assignee": CONSUMER,
        "permission": [
            {
                "action": "use",
                "constraint": [
                    {"leftOperand": "dateTime", "operator": "lteq", "rightOperand": "2026-12-31T06:00Z"},
                    {
                        "leftOperand": "purpose",
                        "operator": "isAnyOf",
                        "rightOperand": ["transit", "planning"],
                    },
                ],
            }
        ],
        "prohibition": [{"action": "distribute"}],
    }
    agreement.update(changes)
    return agreement


@pytest.fixture(scope="module")
def provider_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def consumer_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def jwk_of(key: Ed25519PrivateKey) -> dict[str, str]:
    return public_jwk(key.public_key())


def header_of(jws: str) -> dict[str, Any]:
    segment = jws.split(".")[0]
    loaded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return loaded


# ---------------------------------------------------------------- canonical form (RFC 8785)


def test_canonical_form_ignores_key_order_and_spacing():
    agreement = make_agreement()
    reordered = json.loads(json.dumps(agreement, sort_keys=True, indent=7))
    reversed_keys = {key: agreement[key] for key in reversed(list(agreement))}
    assert canonical_form(agreement) == canonical_form(reordered) == canonical_form(reversed_keys)
    assert b" " not in canonical_form({"a": [1, 2], "b": {"c": None}})
    assert canonical_form({"b": 2, "a": {"d": True, "c": None}}) == b'{"a":{"c":null,"d":true},"b":2}'


def test_canonical_form_unicode_is_utf8_and_keys_sort_by_utf16_code_units():
    # RFC 8785 section 3.2.3's sorting example: "\ufb33" sorts after the emoji's surrogate pair.
    keys = ["\u20ac", "\r", "\ufb33", "1", "\U0001f600", "\u0080", "\u00f6"]
    canonical = canonical_form({key: index for index, key in enumerate(keys)})
    assert canonical.decode("utf-8") == (
        '{"\\r":1,"1":3,"\u0080":5,"\u00f6":6,"\u20ac":0,"\U0001f600":4,"\ufb33":2}'
    )
    # Non-ASCII text is written as UTF-8, never \u-escaped; control characters are escaped.
    assert canonical_form({"title": "Gemeinde Köln €\u000f"}) == '{"title":"Gemeinde Köln €\\u000f"}'.encode()


def test_canonical_form_numbers_follow_ecmascript():
    numbers = {"a": 1.0, "b": 1e21, "c": 0.000001, "d": 1e-7, "e": -0.0, "f": 333333333.33333329, "g": 10}
    assert canonical_form(numbers) == (
        b'{"a":1,"b":1e+21,"c":0.000001,"d":1e-7,"e":0,"f":333333333.3333333,"g":10}'
    )
    # 1 and 1.0 are the same JSON number: the same bytes, the same signature.
    assert canonical_form({"n": 1}) == canonical_form({"n": 1.0})


def test_canonical_form_leaves_signature_members_out():
    agreement = make_agreement()
    signed = {**agreement, SIGNATURE_MEMBER: "x..y", "providerSignature": "p", "consumerSignature": "c"}
    assert canonical_form(signed) == canonical_form(agreement)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 2**60])
def test_canonical_form_refuses_values_jcs_cannot_write(value):
    with pytest.raises(SignatureError, match="canonical JSON"):
        canonical_form(make_agreement(extra=value))


# ---------------------------------------------------------------- sign and verify


def test_sign_and_verify_round_trip(provider_key):
    agreement = make_agreement()
    jws = sign_agreement(agreement, provider_key, f"{PROVIDER}#key-1")
    header_part, payload_part, signature_part = jws.split(".")
    assert payload_part == "", "a detached JWS (RFC 7515 appendix F)"
    assert header_of(jws) == {"alg": "EdDSA", "kid": f"{PROVIDER}#key-1", "typ": "tessera-agreement+jws"}
    assert len(base64.urlsafe_b64decode(signature_part + "==")) == 64
    # The payload is exactly the canonical form: any implementation can check it with plain Ed25519.
    provider_key.public_key().verify(
        base64.urlsafe_b64decode(signature_part + "=="),
        f"{header_part}.{b64(canonical_form(agreement))}".encode(),
    )
    verify_agreement_signature(agreement, jws, jwk_of(provider_key), expected_kid_did=PROVIDER)
    verify_agreement_signature(json.loads(json.dumps(agreement, indent=2)), jws, jwk_of(provider_key))
    assert signer_did(jws) == PROVIDER
    # Ed25519 is deterministic: the same agreement and key give the same signature.
    assert sign_agreement(copy.deepcopy(agreement), provider_key, f"{PROVIDER}#key-1") == jws


def _set_in(agreement: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    node: Any = agreement
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("target",), "urn:uuid:another-asset"),
        (("assignee",), "did:web:someone-else.example"),
        (("assigner",), "did:web:someone-else.example"),
        (("timestamp",), "2025-03-01T10:00:01Z"),
        (("@id",), "urn:uuid:another-agreement"),
        (("permission", 0, "constraint", 0, "rightOperand"), "2099-12-31T06:00Z"),
        (("permission", 0, "constraint", 1, "rightOperand"), ["transit", "planning", "marketing"]),
        (("permission", 0, "action"), "distribute"),
        (("prohibition",), []),
        (("obligation",), [{"action": "delete"}]),
    ],
)
def test_changing_any_field_breaks_the_signature(provider_key, path, value):
    agreement = make_agreement()
    jws = sign_agreement(agreement, provider_key, f"{PROVIDER}#key-1")
    changed = copy.deepcopy(agreement)
    _set_in(changed, path, value)
    with pytest.raises(SignatureError, match=r"signature .* does not match the agreement") as caught:
        verify_agreement_signature(changed, jws, jwk_of(provider_key), expected_kid_did=PROVIDER)
    assert caught.value.reason == "mismatch"


def test_a_signature_by_another_key_under_the_right_kid_fails(provider_key, consumer_key):
    agreement = make_agreement()
    forged = sign_agreement(agreement, consumer_key, f"{PROVIDER}#key-1")
    with pytest.raises(SignatureError, match="does not match the agreement"):
        verify_agreement_signature(agreement, forged, jwk_of(provider_key), expected_kid_did=PROVIDER)


def test_a_kid_of_another_did_is_refused(provider_key):
    agreement = make_agreement()
    jws = sign_agreement(agreement, provider_key, f"{CONSUMER}#key-1")
    with pytest.raises(SignatureError, match=f"names the key of {CONSUMER}, not of {PROVIDER}") as caught:
        verify_agreement_signature(agreement, jws, jwk_of(provider_key), expected_kid_did=PROVIDER)
    assert caught.value.reason == "kid"
    with pytest.raises(SignatureError, match="the key given is"):
        verify_agreement_signature(agreement, jws, {**jwk_of(provider_key), "kid": f"{PROVIDER}#key-1"})


def _forged(header: dict[str, Any], signing: Any) -> str:
    protected = b64(json.dumps(header).encode())
    payload = b64(canonical_form(make_agreement()))
    return f"{protected}..{b64(signing(f'{protected}.{payload}'.encode()))}"


def test_alg_none_and_hmac_forgeries_are_refused_before_any_key_is_used(provider_key):
    agreement = make_agreement()
    jwk = jwk_of(provider_key)
    kid = f"{PROVIDER}#key-1"
    secret = base64.urlsafe_b64decode(jwk["x"] + "=")  # the classic confusion: the public key as HMAC secret
    forgeries = {
        "none": _forged({"alg": "none", "kid": kid, "typ": "tessera-agreement+jws"}, lambda _: b""),
        "HS256": _forged(
            {"alg": "HS256", "kid": kid, "typ": "tessera-agreement+jws"},
            lambda data: hmac.new(secret, data, hashlib.sha256).digest(),
        ),
        "HS256 with x as text": _forged(
            {"alg": "HS256", "kid": kid, "typ": "tessera-agreement+jws"},
            lambda data: hmac.new(jwk["x"].encode(), data, hashlib.sha256).digest(),
        ),
    }
    for name, jws in forgeries.items():
        with pytest.raises(
            SignatureError, match="is not allowed: agreement signatures must be EdDSA"
        ) as caught:
            verify_agreement_signature(agreement, jws, jwk, expected_kid_did=PROVIDER)
        assert caught.value.reason == "algorithm", name


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda jws: "not a jws", "not a compact JWS"),
        (lambda jws: jws.replace("..", ".e30."), "not a detached JWS"),
        (lambda jws: "!!!" + jws, "not a compact JWS"),
        (lambda jws: "e30" + jws[jws.index(".") :], "is not allowed"),  # header {}: no alg
        (lambda jws: jws[:-4], "not a 64-byte Ed25519 signature"),
        (lambda jws: "x" * 5000, "longer than"),
        (lambda jws: "", "missing"),
    ],
)
def test_malformed_signatures_are_named(provider_key, mangle, message):
    agreement = make_agreement()
    jws = sign_agreement(agreement, provider_key, f"{PROVIDER}#key-1")
    with pytest.raises(SignatureError, match=message):
        verify_agreement_signature(agreement, mangle(jws), jwk_of(provider_key))
    assert signer_did(mangle(jws)) in (None, PROVIDER)


@pytest.mark.parametrize(
    ("header_changes", "message"),
    [
        ({"typ": "JWT"}, "not an agreement signature"),
        ({"jwk": {"kty": "OKP"}}, "may not carry jwk"),
        ({"crit": ["b64"], "b64": False}, "may not carry crit, b64"),
        ({"kid": "key-1"}, "not of the form <did>#<fragment>"),
    ],
)
def test_headers_we_do_not_sign_are_refused(provider_key, header_changes, message):
    header = {"alg": "EdDSA", "kid": f"{PROVIDER}#key-1", "typ": "tessera-agreement+jws", **header_changes}
    jws = _forged(header, provider_key.sign)
    with pytest.raises(SignatureError, match=message):
        verify_agreement_signature(make_agreement(), jws, jwk_of(provider_key))


def test_unusable_public_keys_are_named(provider_key):
    agreement = make_agreement()
    jws = sign_agreement(agreement, provider_key, f"{PROVIDER}#key-1")
    for jwk in ({"kty": "RSA", "n": "x", "e": "AQAB"}, {**jwk_of(provider_key), "d": "secret"}):
        with pytest.raises(SignatureError, match="public key is not usable") as caught:
            verify_agreement_signature(agreement, jws, jwk)
        assert caught.value.reason == "key"


def test_sign_refuses_a_key_id_without_did(provider_key):
    with pytest.raises(SignatureError, match="<did>#<fragment>"):
        sign_agreement(make_agreement(), provider_key, "key-1")


# ---------------------------------------------------------------- the store, on SQLite and PostgreSQL


def signed_record(
    provider_key: Ed25519PrivateKey,
    consumer_key: Ed25519PrivateKey | None,
    agreement_id: str,
    *,
    negotiation_id: str = "n-1",
    asset: str = "asset-1",
    signed_at: int = 1_740_823_200_000,
    provider: str = PROVIDER,
    consumer: str = CONSUMER,
    **extra: Any,
) -> AgreementRecord:
    agreement = make_agreement(agreement_id, target=asset, assigner=provider, assignee=consumer, **extra)
    return AgreementRecord(
        id=agreement_id,
        negotiation_id=negotiation_id,
        provider_did=provider,
        consumer_did=consumer,
        asset_id=asset,
        agreement=agreement,
        signed_at=signed_at,
        provider_signature=sign_agreement(agreement, provider_key, f"{provider}#key-1"),
        consumer_signature=(
            sign_agreement(agreement, consumer_key, f"{consumer}#key-1") if consumer_key else None
        ),
    )


def test_store_get_and_query(make_connector, database_url, provider_key, consumer_key):
    participant = make_connector("city", database_url=database_url)
    unicode_title = "Fahrgastzählung Köln \u2013 ☃ \U0001f68c"
    first = signed_record(
        provider_key, consumer_key, "agr-1", asset="asset-1", signed_at=1_700_000_000_000, title=unicode_title
    )
    second = signed_record(
        provider_key, None, "agr-2", negotiation_id="n-2", asset="asset-2", signed_at=1_700_000_500_000
    )
    third = signed_record(
        provider_key,
        None,
        "agr-3",
        negotiation_id="n-3",
        asset="asset-2",
        signed_at=1_700_001_000_000,
        consumer="did:web:other.example",
    )
    with Session(participant.core.engine) as session:
        for record in (first, second, third):
            assert store_agreement(session, record) == record
        with pytest.raises(ConflictError, match="agr-1 already exists"):
            store_agreement(session, first)
        with pytest.raises(InvalidInputError, match="@id"):
            store_agreement(session, AgreementRecord(**{**second.__dict__, "id": "agr-other"}))

    with Session(participant.core.engine) as session:
        got = get_agreement(session, "agr-1")
        assert got == first
        assert got is not None
        assert got.agreement["title"] == unicode_title
        # What comes back is what was signed: the signatures still verify.
        verify_agreement_signature(got.agreement, got.provider_signature or "", jwk_of(provider_key))
        verify_agreement_signature(got.agreement, got.consumer_signature or "", jwk_of(consumer_key))
        assert get_agreement(session, "missing") is None
        assert agreement_for_negotiation(session, "n-2") == second
        assert agreement_for_negotiation(session, "n-none") is None

        def ids(*criteria: Criterion, **spec: Any) -> list[str]:
            return [r.id for r in query_agreements(session, QuerySpec(criteria=criteria, **spec))]

        assert ids() == ["agr-1", "agr-2", "agr-3"]
        assert ids(sort_order="DESC", sort_field="signedAt") == ["agr-3", "agr-2", "agr-1"]
        assert ids(Criterion("assetId", "=", ("asset-2",))) == ["agr-2", "agr-3"]
        assert ids(Criterion("consumerId", "=", ("did:web:other.example",))) == ["agr-3"]
        assert ids(Criterion("providerId", "=", (PROVIDER,)), limit=1, offset=1) == ["agr-2"]
        assert ids(Criterion("negotiationId", "in", ("n-1", "n-3"))) == ["agr-1", "agr-3"]
        assert ids(Criterion("contractSigningDate", ">=", (1_700_000_500,))) == ["agr-2", "agr-3"]
        assert ids(Criterion("edc:signedAt", "<", (1_700_000_500_000,))) == ["agr-1"]
        assert ids(Criterion("id", "like", ("agr-%",)), sort_field="contractSigningDate") == [
            "agr-1",
            "agr-2",
            "agr-3",
        ]
        with pytest.raises(QuerySpecError, match="not a field of ContractAgreement"):
            ids(Criterion("policy", "=", ("x",)))

        # The consumer's counter-signature arrives later; the same one again is harmless.
        counter = sign_agreement(second.agreement, consumer_key, f"{CONSUMER}#key-1")
        set_consumer_signature(session, "agr-2", counter)
        set_consumer_signature(session, "agr-2", counter)
        with pytest.raises(ConflictError, match="different consumer signature"):
            set_consumer_signature(session, "agr-2", first.consumer_signature or "")
        with pytest.raises(NotFoundError):
            set_consumer_signature(session, "missing", counter)
    with Session(participant.core.engine) as session:
        stored = get_agreement(session, "agr-2")
        assert stored is not None
        assert stored.consumer_signature == counter


def test_agreement_in_edc_form(provider_key):
    record = signed_record(provider_key, None, "agr-edc", signed_at=1_740_823_200_123)
    edc = agreement_to_edc(record)
    assert edc["@context"] == EDC_RESPONSE_CONTEXT
    assert {k: edc[k] for k in ("@type", "@id", "assetId", "providerId", "consumerId")} == {
        "@type": "ContractAgreement",
        "@id": "agr-edc",
        "assetId": "asset-1",
        "providerId": PROVIDER,
        "consumerId": CONSUMER,
    }
    assert edc["contractSigningDate"] == 1_740_823_200, "EDC's contractSigningDate is in epoch seconds"
    assert edc["providerSignature"] == record.provider_signature
    assert edc["consumerSignature"] is None
    assert edc["signedBy"] == ["provider"]
    policy = edc["policy"]
    assert policy["@type"] == "odrl:Agreement"
    assert policy["@id"] == "agr-edc"
    assert policy["odrl:target"] == {"@id": "asset-1"}
    assert policy["odrl:assigner"] == {"@id": PROVIDER}
    assert policy["odrl:assignee"] == {"@id": CONSUMER}
    assert policy["odrl:obligation"] == []
    assert policy["odrl:prohibition"] == {"odrl:action": {"@id": "odrl:distribute"}}
    permission = policy["odrl:permission"]
    assert permission["odrl:action"] == {"@id": "odrl:use"}
    assert permission["odrl:constraint"] == [
        {
            "odrl:leftOperand": {"@id": "odrl:dateTime"},
            "odrl:operator": {"@id": "odrl:lteq"},
            "odrl:rightOperand": "2026-12-31T06:00Z",
        },
        {
            "odrl:leftOperand": {"@id": "odrl:purpose"},
            "odrl:operator": {"@id": "odrl:isAnyOf"},
            "odrl:rightOperand": ["transit", "planning"],
        },
    ]
    both = signed_record(provider_key, provider_key, "agr-both")
    assert agreement_to_edc(both)["signedBy"] == ["provider", "consumer"]


# ---------------------------------------------------------------- evidence bundles


def keys_of(provider_key, consumer_key) -> dict[str, dict[str, str]]:
    return {PROVIDER: jwk_of(provider_key), CONSUMER: jwk_of(consumer_key)}


def test_a_bundle_signed_by_both_verifies(provider_key, consumer_key):
    bundle = export_bundle(
        signed_record(provider_key, consumer_key, "agr-1"), keys_of(provider_key, consumer_key)
    )
    assert bundle["type"] == BUNDLE_TYPE
    assert set(bundle) == {"type", "agreement", "provider", "consumer"}
    assert bundle["consumer"]["publicKeyJwk"] == jwk_of(consumer_key)
    report = verify_bundle(json.loads(json.dumps(bundle)))
    assert report.ok, report.problems
    assert report.both_signed
    assert report.provider.verified
    assert report.consumer.verified
    assert report.provider.key_id == f"{PROVIDER}#key-1"
    assert report.notes == ()
    assert verify_bundle(bundle, pinned=keys_of(provider_key, consumer_key)).ok


def test_a_bundle_signed_by_the_provider_only(provider_key, consumer_key):
    record = signed_record(provider_key, None, "agr-1")
    bundle = export_bundle(record, {PROVIDER: jwk_of(provider_key)})
    assert bundle["consumer"] == {"did": CONSUMER, "signature": None, "publicKeyJwk": None}
    report = verify_bundle(bundle)
    assert report.ok
    assert not report.both_signed
    assert report.notes == (
        "signed by the provider only: the consumer (an EDC connector?) did not counter-sign",
    )
    strict = verify_bundle(bundle, require_both=True)
    assert not strict.ok
    assert "signed by one party only" in strict.problems[0]


def test_export_needs_the_key_of_every_signer(provider_key, consumer_key):
    with pytest.raises(EvidenceError, match=f"the consumer {CONSUMER} signed the agreement"):
        export_bundle(signed_record(provider_key, consumer_key, "agr-1"), {PROVIDER: jwk_of(provider_key)})


def _problems(bundle: dict[str, Any], **options: Any) -> tuple[str, ...]:
    report = verify_bundle(bundle, **options)
    assert not report.ok
    return report.problems


def test_tampered_bundles_fail_naming_the_check(provider_key, consumer_key):
    other_key = Ed25519PrivateKey.generate()
    bundle = export_bundle(
        signed_record(provider_key, consumer_key, "agr-1"), keys_of(provider_key, consumer_key)
    )

    changed = copy.deepcopy(bundle)
    changed["agreement"]["permission"][0]["constraint"][0]["rightOperand"] = "2099-12-31T06:00Z"
    assert _problems(changed) == (
        "the provider's signature does not match the agreement — the agreement or the signature was changed",
        "the consumer's signature does not match the agreement — the agreement or the signature was changed",
    )

    swapped = copy.deepcopy(bundle)
    swapped["provider"]["signature"], swapped["consumer"]["signature"] = (
        bundle["consumer"]["signature"],
        bundle["provider"]["signature"],
    )
    problems = _problems(swapped)
    assert problems[0].startswith("the provider's key is not the one named in its signature")
    assert problems[1].startswith("the consumer's key is not the one named in its signature")

    other_consumer = copy.deepcopy(bundle)
    other_consumer["consumer"]["did"] = "did:web:impostor.example"
    assert _problems(other_consumer)[0].startswith("the consumer's key is not the one named in its signature")

    resigned = copy.deepcopy(bundle)
    resigned["consumer"]["signature"] = sign_agreement(bundle["agreement"], other_key, f"{CONSUMER}#key-1")
    assert _problems(resigned) == (
        "the consumer's signature does not match the agreement — the agreement or the signature was changed",
    )

    # Another key in the bundle and a signature by it: only the pinned key tells.
    replaced = copy.deepcopy(resigned)
    replaced["consumer"]["publicKeyJwk"] = jwk_of(other_key)
    assert verify_bundle(replaced).ok
    assert _problems(replaced, pinned=keys_of(provider_key, consumer_key)) == (
        f"the consumer's key in the bundle is not the key pinned for {CONSUMER} in the trust list",
    )

    unsigned = copy.deepcopy(bundle)
    unsigned["provider"]["signature"] = None
    assert "the provider's signature is missing" in _problems(unsigned)[0]

    forged = copy.deepcopy(bundle)
    forged["provider"]["signature"] = _forged(
        {"alg": "none", "kid": f"{PROVIDER}#key-1", "typ": "tessera-agreement+jws"}, lambda _: b""
    )
    assert "algorithm 'none' is not allowed" in _problems(forged)[0]

    assert "not an agreement evidence bundle" in _problems({**bundle, "type": "x"})[0]
    assert "not an Agreement" in _problems({**bundle, "agreement": []})[0]


# ---------------------------------------------------------------- the CLI, as real commands


def _trust(participant, other) -> None:
    with Session(participant.core.engine) as session:
        add_member(session, other.did, other.settings.dsp_url, public_jwk(private_key_of(other).public_key()))


def test_cli_export_and_verify(make_connector, tessera_cli, tmp_path: Path):
    city, bus = make_connector("city"), make_connector("bus")
    _trust(city, bus)
    _trust(bus, city)
    city_key, bus_key = private_key_of(city), private_key_of(bus)
    both = signed_record(city_key, bus_key, "agr-both", provider=city.did, consumer=bus.did)
    provider_only = signed_record(
        city_key, None, "agr-one", negotiation_id="n-one", provider=city.did, consumer=bus.did
    )
    for participant, records in ((city, (both, provider_only)), (bus, (both,))):
        with Session(participant.core.engine) as session:
            for record in records:
                store_agreement(session, record)
        participant.core.engine.dispose()

    both_file, one_file, bus_file = tmp_path / "both.json", tmp_path / "one.json", tmp_path / "bus.json"
    exported = run_parallel(
        tessera_cli,
        [
            (
                [
                    "contracts",
                    "export",
                    "agr-both",
                    "--dir",
                    str(city.settings.data_dir),
                    "-o",
                    str(both_file),
                ],
                None,
            ),
            (
                ["contracts", "export", "n-one", "--dir", str(city.settings.data_dir)],
                None,
            ),  # by negotiation id
            (
                ["contracts", "export", "agr-both", "--dir", str(bus.settings.data_dir), "-o", str(bus_file)],
                None,
            ),
            (["contracts", "export", "agr-missing", "--dir", str(city.settings.data_dir)], None),
        ],
    )
    for result in exported[:3]:
        assert result.code == 0, result.stderr
    one_file.write_text(exported[1].stdout)
    assert_one_line_error(exported[3], "agr-missing")
    # Either party exports the same evidence: the same agreement, signatures and keys.
    assert json.loads(both_file.read_text()) == json.loads(bus_file.read_text())
    assert json.loads(both_file.read_text())["provider"]["publicKeyJwk"] == public_jwk(city_key.public_key())

    tampered_file = tmp_path / "tampered.json"
    tampered = json.loads(both_file.read_text())
    tampered["agreement"]["assignee"] = "did:web:impostor.example"
    tampered_file.write_text(json.dumps(tampered))
    not_json = tmp_path / "not.json"
    not_json.write_text("{")

    both_ok, one_ok, one_strict, bad, broken, pinned = run_parallel(
        tessera_cli,
        [
            (["contracts", "verify", str(both_file)], None),
            (["contracts", "verify", str(one_file)], None),
            (["contracts", "verify", str(one_file), "--require-both"], None),
            (["contracts", "verify", str(tampered_file)], None),
            (["contracts", "verify", str(not_json)], None),
            (["contracts", "verify", str(bus_file), "--dir", str(bus.settings.data_dir)], None),
        ],
    )
    assert both_ok.code == 0, both_ok.stdout + both_ok.stderr
    assert "Result: VALID — signed by both parties" in both_ok.stdout
    assert f"{city.did}#key-1" in both_ok.stdout
    assert one_ok.code == 0, one_ok.stdout + one_ok.stderr
    assert "signed by one party only" in one_ok.stdout
    assert "the consumer (an EDC connector?) did not counter-sign" in one_ok.stdout
    assert_one_line_error(one_strict, "signed by one party only")
    assert "Result: NOT VALID" in bad.stdout
    assert_one_line_error(
        bad,
        "the provider's signature does not match the agreement",
        "the consumer's signature does not match the agreement",
        "assignee",
    )
    assert_one_line_error(broken, "is not JSON")
    assert pinned.code == 0, pinned.stdout + pinned.stderr
    assert "checked against the pinned key" in pinned.stdout
