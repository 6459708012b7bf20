"""Search: identifier, patient/subject, _id, _lastUpdated, paging; unknown parameters refused."""

from __future__ import annotations

import httpx
import pytest

from tests.kit.clock import FROZEN_DATE, FROZEN_LOCAL_DATE
from tests.kit.fhir import patient, viable_tumour


def _ids(bundle: dict[str, object]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])]  # type: ignore[attr-defined]


@pytest.fixture
def seeded(fhir: httpx.Client) -> httpx.Client:
    fhir.put("/Patient/a", json=patient(mrn="1", id="a"))
    both = [{"system": "urn:mrn", "value": "2"}, {"system": "urn:other", "value": "1"}]
    fhir.put("/Patient/b", json=patient(mrn="2", id="b", identifier=both))
    for i in range(5):
        fhir.put(
            f"/Observation/oa{i}", json=viable_tumour(subject="Patient/a", value=i, id=f"oa{i}")
        )
    fhir.put("/Observation/ob", json=viable_tumour(subject="Patient/b", id="ob"))
    fhir.put("/Observation/og", json=viable_tumour(subject="Group/a", id="og"))
    return fhir


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("identifier=urn:mrn|1", ["a"]),
        ("identifier=1", ["a", "b"]),
        ("identifier=urn:other|", ["b"]),
        ("identifier=urn:mrn|1,urn:mrn|2", ["a", "b"]),
        ("identifier=urn:mrn|3", []),
        ("_id=b", ["b"]),
        ("_id=a,b", ["a", "b"]),
    ],
)
def test_patient_search(seeded: httpx.Client, query: str, expected: list[str]) -> None:
    result = seeded.get(f"/Patient?{query}").json()
    assert result["type"] == "searchset"
    assert result["total"] == len(expected)
    assert _ids(result) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("patient=a", ["oa0", "oa1", "oa2", "oa3", "oa4"]),
        ("patient=Patient/b", ["ob"]),
        ("subject=Group/a", ["og"]),
        ("subject=a", ["oa0", "oa1", "oa2", "oa3", "oa4", "og"]),
        ("subject:Patient=a", ["oa0", "oa1", "oa2", "oa3", "oa4"]),
        ("patient=a&_id=oa3", ["oa3"]),
    ],
)
def test_reference_search(seeded: httpx.Client, query: str, expected: list[str]) -> None:
    assert _ids(seeded.get(f"/Observation?{query}").json()) == expected


def test_absolute_references_name_local_resources_only_under_our_base(
    seeded: httpx.Client,
) -> None:
    ours = str(seeded.base_url).rstrip("/")
    other = "https://other-hospital.example/fhir"

    def found(query: str) -> list[str]:
        return _ids(seeded.get("/Observation", params={"subject": query}).json())

    assert found(f"{ours}/Patient/b") == ["ob"]
    assert found(f"{ours}/Patient/b/_history/1") == ["ob"]
    assert found(f"{other}/Patient/b") == []
    assert found(f"{other}/Patient/a,Patient/b") == ["ob"]


def test_paging_follows_next_links_and_sees_each_match_once(seeded: httpx.Client) -> None:
    url: str | None = "/Observation?patient=a&_count=2"
    pages: list[list[str]] = []
    while url:
        page = seeded.get(url).json()
        assert page["total"] == 5
        pages.append(_ids(page))
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        url = nxt[0] if nxt else None
    assert pages == [["oa0", "oa1"], ["oa2", "oa3"], ["oa4"]]


def test_count_zero_gives_only_the_total(seeded: httpx.Client) -> None:
    result = seeded.get("/Observation?patient=a&_count=0").json()
    assert (result["total"], result["entry"]) == (5, [])


def test_last_updated_bounds(seeded: httpx.Client) -> None:
    today = FROZEN_DATE  # the server stamps UTC instants; the process's local day is the one before
    assert seeded.get(f"/Patient?_lastUpdated={today.isoformat()}").json()["total"] == 2
    assert seeded.get(f"/Patient?_lastUpdated={FROZEN_LOCAL_DATE.isoformat()}").json()["total"] == 0
    assert seeded.get(f"/Patient?_lastUpdated=ge{today.isoformat()}").json()["total"] == 2
    assert seeded.get(f"/Patient?_lastUpdated=lt{today.isoformat()}").json()["total"] == 0
    assert seeded.get(f"/Patient?_lastUpdated={today.year}").json()["total"] == 2
    assert seeded.get(f"/Patient?_lastUpdated=gt{today.year}").json()["total"] == 0


def test_deleted_resources_are_not_found(seeded: httpx.Client) -> None:
    seeded.delete("/Observation/oa0")
    assert _ids(seeded.get("/Observation?patient=a").json()) == ["oa1", "oa2", "oa3", "oa4"]


def test_updates_move_the_index(seeded: httpx.Client) -> None:
    seeded.put("/Observation/ob", json=viable_tumour(subject="Patient/a", id="ob"))
    assert seeded.get("/Observation?patient=b").json()["total"] == 0
    assert seeded.get("/Observation?patient=a").json()["total"] == 6


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("date=2025", 400, "not-supported"),
        ("identifier:text=x", 400, "not-supported"),
        ("_count=-1", 400, "invalid"),
        ("_lastUpdated=yesterday", 400, "invalid"),
        ("_cursor=%%%", 400, "invalid"),
        ("patient=Group/a", 400, "invalid"),
    ],
)
def test_bad_search_parameters_are_refused(
    seeded: httpx.Client, query: str, status: int, code: str
) -> None:
    response = seeded.get(f"/Observation?{query}")
    assert response.status_code == status
    assert response.json()["issue"][0]["code"] == code


def test_unknown_resource_type_is_404(fhir: httpx.Client) -> None:
    response = fhir.get("/Composition?_id=x")
    assert (response.status_code, response.json()["issue"][0]["code"]) == (404, "not-supported")


def test_a_search_past_the_bounds_is_the_client_s_400_not_a_503(seeded: httpx.Client) -> None:
    """1,000 `_id` parameters made SQLite refuse the query, answered as "database unavailable"
    (503, retry later); the same search, or a parameter of too many values, is now refused as the
    client's (400 too-costly, naming the parameter) before it reaches the database, in a search
    and in a Bundle's conditional entry alike. Up to the bounds, searches are answered."""
    many = "&".join(f"_id=x{i}" for i in range(1000))
    refused = seeded.get(f"/Patient?{many}")
    assert refused.status_code == 400
    assert refused.json()["issue"][0]["code"] == "too-costly"
    assert refused.json()["issue"][0]["expression"] == ["_id"]
    values = ",".join(f"x{i}" for i in range(101))
    too_wide = seeded.get(f"/Patient?_id={values}")
    assert too_wide.status_code == 400
    assert too_wide.json()["issue"][0]["code"] == "too-costly"
    in_bundle = seeded.post(
        "",
        json={
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"request": {"method": "GET", "url": f"Patient?{many}"}}],
        },
    )
    assert in_bundle.status_code == 200
    assert in_bundle.json()["entry"][0]["response"]["status"].startswith("400")
    at_bounds = "&".join(
        ["_id=a,b"] * 49 + ["_id=" + ",".join(["a"] + [f"y{i}" for i in range(99)])]
    )
    assert _ids(seeded.get(f"/Patient?{at_bounds}").json()) == ["a"]
