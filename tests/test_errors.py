"""One error catalogue: every code registered once with its status; the OpenAPI document, the
gunicorn worker's answers and the nginx front's error pages are made from it."""
from __future__ import annotations

import json
import re

import pytest

from fastfit_engine import errors
from fastfit_engine.errors import CODES, ERROR_CODES, TryOnError, exit_code, transport_errors


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def test_every_error_class_has_a_registered_code_and_takes_its_status_from_it():
    import fastfit_service.app  # noqa: F401 - the service's own error classes
    import inference  # noqa: F401

    for cls in [TryOnError, *_subclasses(TryOnError)]:
        err = cls("x") if cls.__name__ != "ServiceUnavailable" else cls("x", code="loading")
        assert err.code in CODES, cls
        if cls.__name__ == "ServiceUnavailable":  # a refusal of service: 503 whatever the code
            assert err.status == 503
            continue
        assert err.status == CODES[err.code].status and (cls is TryOnError or "status" not in vars(cls)), cls
    assert errors.NonFiniteOutputError("x").status == 500 and errors.ClientGone("x").status == 499


def test_cli_exit_codes_split_at_500():
    assert [exit_code(s) for s in (400, 413, 499, 500, 503, 504)] == [2, 2, 2, 1, 1, 1]


def test_transport_codes_carry_their_message():
    for c in ERROR_CODES:
        assert bool(c.transports) == (c.message is not None), c.code
    assert transport_errors("gunicorn")[408].code == "request_timeout"
    assert transport_errors("nginx")[429].retry_after


def test_gunicorn_worker_answers_from_the_catalogue():
    from fastfit_service import gunicorn_worker

    assert gunicorn_worker._ERROR_CODES == {s: (c.code, c.message) for s, c in transport_errors("gunicorn").items()}
    assert set(gunicorn_worker._ERROR_CODES) == {400, 403, 408, 414, 417, 431, 500, 501}


def test_nginx_error_pages_come_from_the_catalogue():
    from fastfit_service import instances, nginx_front

    env = {"FASTFIT_MAX_UPLOAD_MB": "7", "FASTFIT_RETRY_AFTER": "9"}
    text = nginx_front.render_nginx_config(env, instances.plan_instances({**env, "FASTFIT_DEVICES": "cpu"}), "/tmp/x")
    pages = dict(re.findall(r"location = /_fastfit_error/(\d+) \{ (.*?) \}\n", text))
    nginx = transport_errors("nginx")
    assert sorted(int(s) for s in pages) == sorted(nginx)
    for status, c in nginx.items():
        body = json.loads(re.search(r"return \d+ '(.*)\\n';", pages[str(status)]).group(1))
        assert body == {"error": {"code": c.code, "message": c.message.format(max_body_mb="7")}}
        assert ("add_header Retry-After 9 always" in pages[str(status)]) == c.retry_after
    # every status nginx sends to an error page has one
    targets = set(re.findall(r"error_page [\d =]+ /_fastfit_error/(\d+);", text))
    assert targets == set(pages)


@pytest.mark.parametrize("code", [c.code for c in ERROR_CODES if c.transports])
def test_transport_codes_are_in_openapi(code):
    from fastfit_service.openapi import build_openapi

    doc = build_openapi()
    assert code in doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]
    status = str(CODES[code].status)
    assert f"`{code}`" in doc["paths"]["/prompt"]["post"]["responses"][status]["description"]


def _readme_error_rows() -> list[tuple[list[int], list[str]]]:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = []
    for table in re.findall(r"\| status \| code \| when \|\n\|[-|]+\|\n((?:\|.*\|\n)+)", text):
        for line in table.splitlines():
            status_cell, code_cell = line.split("|")[1:3]
            rows.append(([int(s) for s in re.findall(r"\d{3}", status_cell)], re.findall(r"`([a-z_]+)`", code_cell)))
    return rows


def test_readme_error_tables_agree_with_the_catalogue():
    rows = _readme_error_rows()
    assert len(rows) > 20
    for statuses, codes in rows:
        expected = statuses * len(codes) if len(statuses) == 1 else statuses
        assert [CODES[c].status for c in codes] == expected, (statuses, codes)
    listed = {c for _, codes in rows for c in codes}
    assert sorted(set(CODES) - listed) == []
