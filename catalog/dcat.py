"""DCAT / Dublin Core metadata of an asset: validation and the fields we index.

Asset properties arrive as expanded JSON-LD. The DCAT terms below are checked
when present (clients built for EDC send assets with none of them); the
personal-data terms are Tessera's own and are all-or-nothing: an asset that
says it is personal must name its subject field and its consent purpose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from catalog.jsonld import DCAT_NS, DCT_NS, EDC_NS, TESSERA_NS

TITLE = DCT_NS + "title"
DESCRIPTION = DCT_NS + "description"
KEYWORD = DCAT_NS + "keyword"
THEME = DCAT_NS + "theme"
PUBLISHER = DCT_NS + "publisher"
LICENSE = DCT_NS + "license"
TEMPORAL = DCT_NS + "temporal"
SPATIAL = DCT_NS + "spatial"
MEDIA_TYPE = DCAT_NS + "mediaType"
FREQUENCY = DCT_NS + "accrualPeriodicity"
START_DATE = DCAT_NS + "startDate"
END_DATE = DCAT_NS + "endDate"
PERSONAL = TESSERA_NS + "personal"
SUBJECT_FIELD = TESSERA_NS + "subjectField"
CONSENT_PURPOSE = TESSERA_NS + "consentPurpose"
EDC_NAME = EDC_NS + "name"
EDC_DESCRIPTION = EDC_NS + "description"

EU_FREQUENCY = "http://publications.europa.eu/resource/authority/frequency/"
FREQUENCIES = frozenset(
    {
        "CONT", "UPDATE_CONT", "HOURLY", "DAILY", "BIDAILY", "WEEKLY", "BIWEEKLY", "MONTHLY", "BIMONTHLY",
        "QUARTERLY", "ANNUAL", "BIENNIAL", "IRREG", "NEVER", "UNKNOWN", "OTHER", "1MIN", "5MIN", "10MIN",
        "15MIN", "30MIN", "12HRS", "DAILY_2", "WEEKLY_2", "WEEKLY_3", "MONTHLY_2", "MONTHLY_3", "ANNUAL_2",
        "ANNUAL_3", "TRIENNIAL", "QUADRENNIAL", "QUINQUENNIAL", "DECENNIAL", "BIHOURLY", "TRIHOURLY",
    }
)  # fmt: skip
_MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}(;.*)?$", re.I)
_SPDX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+\-]{0,63}$")
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")
MAX_KEYWORDS = 50
MAX_THEMES = 20


class MetadataError(ValueError):
    def __init__(self, message: str, path: str, invalid_value: Any = None) -> None:
        super().__init__(message)
        self.path = path
        self.invalid_value = invalid_value


@dataclass(frozen=True)
class IndexedMetadata:
    """What the asset table keeps in columns, for listing and search."""

    title: str | None
    description: str | None
    publisher: str | None
    license: str | None
    personal: bool
    keywords: tuple[str, ...] = ()
    themes: tuple[str, ...] = ()
    subject_field: str | None = None
    consent_purpose: str | None = None


def _plain(item: Any) -> Any:
    if isinstance(item, dict):
        if "@value" in item:
            return item["@value"]
        if "@id" in item and len(item) == 1:
            return item["@id"]
        return item
    return item


def _all(properties: dict[str, Any], iri: str) -> list[Any]:
    found = properties.get(iri, [])
    return [_plain(v) for v in (found if isinstance(found, list) else [found])]


def _one(properties: dict[str, Any], iri: str, name: str) -> Any:
    found = _all(properties, iri)
    if len(found) > 1:
        raise MetadataError(f"{name} takes one value", iri, found)
    return found[0] if found else None


def _text(properties: dict[str, Any], iri: str, name: str, limit: int) -> str | None:
    value = _one(properties, iri, name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise MetadataError(f"{name} must be non-empty text", iri, value)
    if len(value) > limit:
        raise MetadataError(f"{name} is longer than {limit} characters", iri, value[:80] + "…")
    return value.strip()


def _is_url(value: str) -> bool:
    return re.match(r"^https?://[^\s/$.?#][^\s]*$", value) is not None


def _date(value: Any, name: str, iri: str) -> date:
    if isinstance(value, str):
        try:
            return (
                datetime.fromisoformat(value.replace("Z", "+00:00")).date()
                if "T" in value
                else date.fromisoformat(value)
            )
        except ValueError:
            pass
    raise MetadataError(f"{name} must be an ISO 8601 date or date-time", iri, value)


def _check_temporal(properties: dict[str, Any]) -> None:
    value = _one(properties, TEMPORAL, "dct:temporal")
    if value is None:
        return
    if isinstance(value, str) and "/" in value:
        start_text, end_text = value.split("/", 1)
        start, end = (
            _date(start_text, "dct:temporal start", TEMPORAL),
            _date(end_text, "dct:temporal end", TEMPORAL),
        )
    elif isinstance(value, dict):
        start_values, end_values = _all(value, START_DATE), _all(value, END_DATE)
        if not start_values and not end_values:
            raise MetadataError("dct:temporal needs dcat:startDate and/or dcat:endDate", TEMPORAL, value)
        start = _date(start_values[0], "dcat:startDate", START_DATE) if start_values else date.min
        end = _date(end_values[0], "dcat:endDate", END_DATE) if end_values else date.max
    else:
        raise MetadataError(
            "dct:temporal must be an interval 'START/END' or an object with dcat:startDate/dcat:endDate",
            TEMPORAL,
            value,
        )
    if start > end:
        raise MetadataError("dct:temporal ends before it starts", TEMPORAL, value)


def _flag(properties: dict[str, Any], iri: str, name: str) -> bool:
    value = _one(properties, iri, name)
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise MetadataError(f"{name} must be true or false", iri, value)


def validate_metadata(properties: dict[str, Any]) -> IndexedMetadata:
    """Check the DCAT and personal-data terms of an asset's (expanded) properties."""
    title = _text(properties, TITLE, "dct:title", 512) or _text(properties, EDC_NAME, "name", 512)
    description = _text(properties, DESCRIPTION, "dct:description", 10_000) or _text(
        properties, EDC_DESCRIPTION, "description", 10_000
    )
    keywords = _all(properties, KEYWORD)
    if len(keywords) > MAX_KEYWORDS:
        raise MetadataError(f"dcat:keyword takes at most {MAX_KEYWORDS} values", KEYWORD, len(keywords))
    for keyword in keywords:
        if not isinstance(keyword, str) or not keyword.strip() or len(keyword) > 100:
            raise MetadataError("each dcat:keyword must be text of 1 to 100 characters", KEYWORD, keyword)
    themes = _all(properties, THEME)
    if len(themes) > MAX_THEMES:
        raise MetadataError(f"dcat:theme takes at most {MAX_THEMES} values", THEME, len(themes))
    for theme in themes:
        if not isinstance(theme, str) or not theme.strip() or len(theme) > 512:
            raise MetadataError(
                "each dcat:theme must be an IRI or a label of at most 512 characters", THEME, theme
            )
    publisher = _one(properties, PUBLISHER, "dct:publisher")
    if isinstance(publisher, dict):  # an organisation node: keep its id or name
        publisher = _plain(
            (publisher.get("@id") and {"@id": publisher["@id"]})
            or (_all(publisher, "http://xmlns.com/foaf/0.1/name") or [None])[0]
        )
    if publisher is not None and (
        not isinstance(publisher, str) or not publisher.strip() or len(publisher) > 512
    ):
        raise MetadataError(
            "dct:publisher must be an IRI or a name of at most 512 characters", PUBLISHER, publisher
        )
    license_ = _one(properties, LICENSE, "dct:license")
    if license_ is not None and (
        not isinstance(license_, str) or not (_is_url(license_) or _SPDX.match(license_))
    ):
        raise MetadataError("dct:license must be a licence URL or an SPDX identifier", LICENSE, license_)
    _check_temporal(properties)
    spatial = _one(properties, SPATIAL, "dct:spatial")
    if spatial is not None and (not isinstance(spatial, str) or len(spatial) > 2000):
        raise MetadataError(
            "dct:spatial must be an IRI, a place name or WKT of at most 2000 characters", SPATIAL, spatial
        )
    media_type = _one(properties, MEDIA_TYPE, "dcat:mediaType")
    if media_type is not None and (not isinstance(media_type, str) or not _MEDIA_TYPE.match(media_type)):
        raise MetadataError("dcat:mediaType must be a media type such as text/csv", MEDIA_TYPE, media_type)
    frequency = _one(properties, FREQUENCY, "dct:accrualPeriodicity")
    if frequency is not None:
        code = (
            frequency[len(EU_FREQUENCY) :]
            if isinstance(frequency, str) and frequency.startswith(EU_FREQUENCY)
            else frequency
        )
        if code not in FREQUENCIES:
            raise MetadataError(
                "dct:accrualPeriodicity must be an EU frequency code or IRI (e.g. DAILY)",
                FREQUENCY,
                frequency,
            )
    personal = _flag(properties, PERSONAL, "tessera:personal")
    subject_field = _one(properties, SUBJECT_FIELD, "tessera:subjectField")
    purpose = _one(properties, CONSENT_PURPOSE, "tessera:consentPurpose")
    if personal:
        if not isinstance(subject_field, str) or not _FIELD_NAME.match(subject_field):
            raise MetadataError(
                "a personal asset needs tessera:subjectField, the record field naming its subject (e.g. card_id)",
                SUBJECT_FIELD,
                subject_field,
            )
        if not isinstance(purpose, str) or not purpose.strip() or len(purpose) > 512:
            raise MetadataError(
                "a personal asset needs tessera:consentPurpose, the purpose citizens consent to",
                CONSENT_PURPOSE,
                purpose,
            )
    elif subject_field is not None or purpose is not None:
        raise MetadataError(
            "tessera:subjectField and tessera:consentPurpose only apply to assets with tessera:personal true",
            PERSONAL,
            False,
        )
    return IndexedMetadata(
        title=title,
        description=description,
        publisher=publisher,
        license=license_,
        personal=personal,
        keywords=tuple(str(k) for k in keywords),
        themes=tuple(str(t) for t in themes),
        subject_field=subject_field if personal else None,
        consent_purpose=purpose if personal else None,
    )
