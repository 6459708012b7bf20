"""/docs and /redoc work on an air-gapped network: every file they load comes from the service
itself, no inline script runs, and the pages' Content-Security-Policy says so to the browser."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from service.infra.settings import Settings
from tests.kit.live import served

JS, CSS, PNG = "text/javascript; charset=utf-8", "text/css; charset=utf-8", "image/png"
# Every file each page loads, its type and a size below which it cannot be what it claims.
PAGES: dict[str, dict[str, tuple[str, int]]] = {
    "/docs": {
        "/docs/swagger-ui.css": (CSS, 50_000),
        "/docs/favicon.png": (PNG, 1_000),
        "/docs/swagger-ui-bundle.js": (JS, 1_000_000),
        "/docs/swagger-init.js": (JS, 300),
    },
    "/redoc": {
        "/redoc/redoc.css": (CSS, 100),
        "/docs/favicon.png": (PNG, 1_000),
        "/redoc/redoc.standalone.js": (JS, 1_000_000),
        "/redoc/redoc-init.js": (JS, 200),
    },
}
INIT_SCRIPTS = {"/docs": "/docs/swagger-init.js", "/redoc": "/redoc/redoc-init.js"}
COMMON_POLICY = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "object-src": ["'none'"],
    "base-uri": ["'none'"],
    "form-action": ["'none'"],
    "frame-ancestors": ["'none'"],
}
# ReDoc draws its layout with inserted <style> elements; scripts stay as strict as on /docs.
POLICIES = {
    "/docs": COMMON_POLICY,
    "/redoc": {**COMMON_POLICY, "style-src": ["'self'", "'unsafe-inline'"]},
}


@pytest.fixture(scope="module")
def docs_url(backend: str, new_database: Any) -> Iterator[str]:
    """The app with authentication on, as deployed: the documentation must still open."""
    settings = Settings(
        database_url=str(new_database(backend)), auth_disabled=False, webhook_interval_seconds=0
    )
    with served(settings) as running:
        yield running.url


class _Page(HTMLParser):
    """Every URL an HTML page names, its scripts' bodies, and any inline event handler."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.scripts: list[tuple[str | None, str]] = []  # (src, body)
        self.handlers: list[str] = []
        self._script: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        self.refs += [v for k, v in attrs if k in ("src", "href", "action") and v is not None]
        self.handlers += [k for k, _ in attrs if k.startswith("on")]
        if tag == "script":
            self._script = []
            self.scripts.append((named.get("src"), ""))

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self._script.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._script is not None:
            src, _ = self.scripts[-1]
            self.scripts[-1] = (src, "".join(self._script))
            self._script = None


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    page.close()
    return page


def _policy(header: str) -> dict[str, list[str]]:
    directives = [d.split() for d in header.split(";") if d.strip()]
    return {d[0]: d[1:] for d in directives}


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_page_loads_only_its_own_files_and_no_inline_script(docs_url: str, path: str) -> None:
    page_url = f"{docs_url}{path}"
    answer = httpx.get(page_url, timeout=30)  # no token: the documentation is open
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    page = _parse(answer.text)
    resolved = [urljoin(page_url, ref) for ref in page.refs]
    origin = urlsplit(docs_url)[:2]
    assert [url for url in resolved if urlsplit(url)[:2] != origin] == []  # no CDN, no other host
    assert sorted(urlsplit(url).path for url in resolved) == sorted(PAGES[path])
    assert not re.search(r"jsdelivr|unpkg|cdnjs|googleapis|redoc\.ly", answer.text)
    assert all(src and not body.strip() for src, body in page.scripts), page.scripts
    assert len(page.scripts) == 2  # the library, then our init file
    assert page.handlers == []
    for url in resolved:
        asset = httpx.get(url, timeout=30)
        media_type, smallest = PAGES[path][urlsplit(url).path]
        assert asset.status_code == 200, url
        assert asset.headers["content-type"] == media_type, url
        assert len(asset.content) >= smallest, url


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_page_policy_forbids_inline_scripts_and_other_origins(docs_url: str, path: str) -> None:
    answer = httpx.get(f"{docs_url}{path}", timeout=30)
    policy = _policy(answer.headers["content-security-policy"])
    assert policy == POLICIES[path]
    assert "'unsafe-inline'" not in policy["script-src"]
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_init_script_starts_the_ui_on_the_served_openapi_document(
    docs_url: str, path: str
) -> None:
    page_url = f"{docs_url}{path}"
    script = httpx.get(f"{docs_url}{INIT_SCRIPTS[path]}", timeout=30).text
    # the document's URL, relative to the page so that a mount prefix carries over
    (relative,) = re.findall(r'new URL\("([^"]+)", document\.baseURI\)', script)
    assert relative == "openapi.json"
    assert ("SwaggerUIBundle({" if path == "/docs" else "Redoc.init(") in script
    document = httpx.get(urljoin(page_url, relative), timeout=30)  # no token either
    assert document.status_code == 200
    assert document.json()["openapi"].startswith("3.1.")
    assert document.json()["info"]["title"] == "trialbridge"


def test_swagger_ui_keeps_its_bearer_authorize_button_and_asks_no_public_validator(
    docs_url: str,
) -> None:
    script = httpx.get(f"{docs_url}/docs/swagger-init.js", timeout=30).text
    assert "validatorUrl: null" in script
    schemes = httpx.get(f"{docs_url}/openapi.json", timeout=30).json()["components"]
    assert schemes["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An access token from POST /auth/token",
    }
    assert httpx.get(f"{docs_url}/api/v1/studies", timeout=30).status_code == 401  # auth is on
    # a bearer scheme has no OAuth redirect: FastAPI's page for one (an inline script) is gone
    assert httpx.get(f"{docs_url}/docs/oauth2-redirect", timeout=30).status_code == 404


def test_a_browser_revalidates_the_large_files_for_free(docs_url: str) -> None:
    url = f"{docs_url}/redoc/redoc.standalone.js"
    first = httpx.get(url, timeout=30)
    assert first.headers["cache-control"] == "no-cache"
    again = httpx.get(url, headers={"if-none-match": first.headers["etag"]}, timeout=30)
    assert (again.status_code, again.content) == (304, b"")
    assert again.headers["etag"] == first.headers["etag"]
    other = httpx.get(url, headers={"if-none-match": '"something-else"'}, timeout=30)
    assert (other.status_code, other.content) == (200, first.content)
