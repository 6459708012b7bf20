// Starts ReDoc on this service's OpenAPI document. A file of its own, not an inline script,
// so that the page's Content-Security-Policy can refuse every inline script.
"use strict";
Redoc.init(new URL("openapi.json", document.baseURI).href, {}, document.getElementById("redoc"));
