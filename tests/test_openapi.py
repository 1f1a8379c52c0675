"""/openapi.json is generated from the one schema, names every error code, and is valid OpenAPI 3.1."""
from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from fastfit_engine.runtime.engine import STAGES
from fastfit_engine.request.schema import (
    GARMENT_FIELDS,
    IMAGE_FIELDS,
    NUMBER_FIELDS,
    OUTPUT_FIELDS,
    PERSON_FIELD,
    VALUE_FIELDS_BY_NAME,
    ChoiceField,
)
from fastfit_service.openapi import ERROR_CODES, build_openapi
from server import create_app
from test_server import BAD_REQUESTS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def app(engine):
    return create_app(engine, {"MAX_UPLOAD_MB": 3})


@pytest.fixture(scope="module")
def doc(app):
    r = app.test_client().get("/openapi.json")
    assert r.status_code == 200 and r.mimetype == "application/json"
    return r.get_json()


def test_document_is_valid_openapi_3_1(doc):
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises on any error
    assert list(OpenAPIV31SpecValidator(doc).iter_errors()) == []


def test_the_validator_catches_a_broken_document(doc):
    broken = {**doc, "paths": {"/prompt": {"post": {"responses": {"200": {}}}}}}  # a response needs a description
    assert list(OpenAPIV31SpecValidator(broken).iter_errors())


def test_every_schema_field_with_range_and_default(doc):
    for body in ("PromptForm", "PromptJson"):
        form = doc["components"]["schemas"][body]
        assert list(form["properties"]) == list(IMAGE_FIELDS) + list(VALUE_FIELDS_BY_NAME)
        assert len(VALUE_FIELDS_BY_NAME) == len(NUMBER_FIELDS) + len(OUTPUT_FIELDS)
        assert form["required"] == [PERSON_FIELD] and form["additionalProperties"] is False
        for name in IMAGE_FIELDS:
            prop = form["properties"][name]
            assert prop.get("format") == "binary" if body == "PromptForm" else prop["contentEncoding"] == "base64"
        for f in VALUE_FIELDS_BY_NAME.values():
            prop = form["properties"][f.name]
            if isinstance(f, ChoiceField):
                assert prop["enum"] == list(f.choices) and prop["default"] == f.default
                continue
            assert prop["type"] == ("integer" if f.kind is int else "number")
            assert (prop["minimum"], prop["maximum"]) == (f.minimum, f.maximum)
            assert prop.get("default") == f.default
        assert form["properties"]["seed"]["maximum"] == 2**32 - 1 and "default" not in form["properties"]["seed"]
        assert form["properties"]["steps"]["default"] == 30
        assert form["properties"]["output_format"]["enum"] == ["png", "jpeg", "webp"]
    body = doc["paths"]["/prompt"]["post"]["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"] == {"$ref": "#/components/schemas/PromptForm"}
    assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/PromptJson"}
    ok = doc["paths"]["/prompt"]["post"]["responses"]["200"]["content"]
    assert set(ok) == {"image/png", "image/jpeg", "image/webp", "application/json"}
    assert "at most 3 MB" in doc["paths"]["/prompt"]["post"]["description"]  # the app's own limit


def test_every_error_code_under_its_status(doc):
    assert doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"] == [
        c.code for c in ERROR_CODES
    ]
    responses = doc["paths"]["/prompt"]["post"]["responses"]
    named = doc["components"]["responses"]
    for c in ERROR_CODES:
        if c.status in (404, 405):
            where = named["NotFound" if c.status == 404 else "MethodNotAllowed"]
        else:
            where = responses[str(c.status)]
        example = where["content"]["application/json"]["examples"][c.code]["value"]
        assert example["error"]["code"] == c.code
        assert f"`{c.code}`" in where["description"]
        if c.retry_after:
            assert where["headers"]["Retry-After"] == {"$ref": "#/components/headers/Retry-After"}


def test_response_headers(doc):
    headers = doc["paths"]["/prompt"]["post"]["responses"]["200"]["headers"]
    assert {"X-Seed", "Server-Timing", "X-Peak-VRAM-MB"} <= set(headers)
    assert all(stage in headers["Server-Timing"]["description"] for stage in STAGES)
    assert "Retry-After" in doc["components"]["headers"]
    assert set(doc["paths"]) == {"/prompt", "/progress/{request_id}", "/health", "/ready", "/metrics", "/openapi.json"}


def test_json_result_schema(doc):
    props = doc["components"]["schemas"]["TryOnJson"]["properties"]
    assert {"image", "content_type", "seed", "timings_ms", "peak_vram_mb"} <= set(props)


def _codes_raised_in_source() -> set[str]:
    """Every error code literal the code base gives an error: `code="..."` arguments, `code = "..."`
    class attributes and the codes error_response() is called with."""
    found: set[str] = set()
    for path in [ROOT / "server.py", *ROOT.glob("fastfit_engine/**/*.py"), *ROOT.glob("fastfit_service/**/*.py")]:
        text = path.read_text()
        found.update(re.findall(r'\bcode="([a-z_]+)"', text))
        found.update(re.findall(r'^\s+code = "([a-z_]+)"', text, flags=re.M))
        found.update(re.findall(r'error_response\(\s*\d{3},\s*"([a-z_]+)"', text))
        found.update(re.findall(r'\b_(?:error|form_error|busy)\(\s*"([a-z_]+)"', text))  # small raising helpers
    return found


def test_catalogue_covers_every_code_the_source_raises():
    raised = _codes_raised_in_source()
    assert len(raised) >= 15, raised  # the scan itself works
    assert {"dress_conflict", "queue_full", "payload_too_large", "invalid_json", "out_of_range", "duplicate_field"} <= raised
    assert raised - {c.code for c in ERROR_CODES} == set()


@pytest.mark.parametrize("desc, build, code, fragment", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_live_errors_are_documented(app, doc, sample_files, desc, build, code, fragment):
    r = app.test_client().post("/prompt", data=build(sample_files), content_type="multipart/form-data")
    got = r.get_json()["error"]["code"]
    examples = doc["paths"]["/prompt"]["post"]["responses"][str(r.status_code)]["content"]["application/json"]["examples"]
    assert got in examples


def test_garment_rules_are_described(doc):
    text = doc["components"]["schemas"]["PromptForm"]["description"]
    assert "dress" in text and "At least one garment" in text
    for g in GARMENT_FIELDS:
        assert doc["components"]["schemas"]["PromptForm"]["properties"][g]["description"]


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


def test_docs_page_is_served_from_the_package(app):
    c = app.test_client()
    r = c.get("/docs/")
    assert r.status_code == 200 and "text/html" in r.content_type
    html = r.get_data(as_text=True)
    assert 'data-openapi-url="/openapi.json"' in html
    start = c.get("/docs/docs.js").get_data(as_text=True)  # Swagger UI is started from a file, no inline script
    assert "SwaggerUIBundle(" in start and "validatorUrl: null" in start
    parser = _Refs()
    parser.feed(html)
    assert len(parser.refs) >= 4
    for ref in parser.refs:
        assert ref.startswith("/docs/"), ref  # nothing from another host
        asset = c.get(ref)
        assert asset.status_code == 200 and len(asset.data) > 100, ref
    absolute = re.findall(r"https?://[^\s\"']+", html)
    assert all(url.startswith("http://localhost/docs/") for url in absolute), absolute  # only our own host
    assert c.get("/docs").status_code in (301, 308)  # the bare path redirects to the page


def test_build_openapi_without_a_config_is_valid():
    doc = build_openapi()
    validate(doc)
    assert "MB" not in doc["paths"]["/prompt"]["post"]["description"]


@pytest.mark.parametrize("metrics_public", [False, True])
def test_bearer_security_matches_the_live_service(engine, metrics_public):
    """Keys configured: a bearer scheme (the Authorize button of /docs) required on /prompt and on
    /metrics (unless public), whose 401 is documented; probes and docs stay open, as live."""
    app = create_app(engine, {"API_KEYS": ("k1",), "METRICS_PUBLIC": metrics_public})
    client = app.test_client()
    doc = client.get("/openapi.json").get_json()
    validate(doc)
    (name, scheme), = doc["components"]["securitySchemes"].items()
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    paths = doc["paths"]
    assert paths["/prompt"]["post"]["security"] == [{name: []}]
    assert "401" in paths["/prompt"]["post"]["responses"]
    for path, method in (("/health", "get"), ("/ready", "get"), ("/openapi.json", "get")):
        assert "security" not in paths[path][method], path
    metrics = paths["/metrics"]["get"]
    live = client.get("/metrics")
    if metrics_public:
        assert "security" not in metrics and "401" not in metrics["responses"] and live.status_code == 200
    else:
        assert metrics["security"] == [{name: []}] and live.status_code == 401
        assert "`unauthorized`" in metrics["responses"]["401"]["description"]
        assert client.get("/metrics", headers={"Authorization": "Bearer k1"}).status_code == 200


def test_bearer_is_optional_without_keys(doc):
    (name,) = doc["components"]["securitySchemes"]
    assert doc["paths"]["/prompt"]["post"]["security"] == [{}, {name: []}]  # anonymous allowed
    assert doc["paths"]["/metrics"]["get"]["security"] == [{}, {name: []}]
