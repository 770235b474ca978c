"""Every route x every kind of credential -> the expected status, on a real server with keys.

Credentials: none, a wrong key, a query-only key limited to collection `docs`, a query key
limited to another collection, an ingest-only key, and an admin key. A route the OpenAPI
schema (or the app) has but this table lacks fails the test: a new endpoint needs its row.
"""

from __future__ import annotations

import httpx
import pytest

from ragtune.serve.auth import ACCESS, Keys
from tests.serve.test_api import served  # noqa: F401  (the module's server: collection docs, adapter voice)

CREDS = ("none", "wrong", "query", "other", "ingest", "admin")
PUBLIC = dict.fromkeys(CREDS, 200)
CHAT = {"model": "base", "max_tokens": 1, "messages": [{"role": "user", "content": "q"}],
        "rag": {"collection": "docs"}}

# route -> (request, expected status per credential); 404/422 mean "let in, then refused for
# the request itself" (an unknown job, a missing document, no training data).
MATRIX = {
    "GET /healthz": (("GET", "/healthz", {}), PUBLIC),
    "GET /readyz": (("GET", "/readyz", {}), PUBLIC),
    "GET /docs": (("GET", "/docs", {}), PUBLIC),
    "GET /redoc": (("GET", "/redoc", {}), PUBLIC),
    "GET /openapi.json": (("GET", "/openapi.json", {}), PUBLIC),
    "GET /": (("GET", "/", {}), PUBLIC),
    "GET /ui/app.js": (("GET", "/ui/app.js", {}), PUBLIC),
    "GET /ui/style.css": (("GET", "/ui/style.css", {}), PUBLIC),
    "GET /metrics": (("GET", "/metrics", {}),
                     dict(none=401, wrong=401, query=403, other=403, ingest=403, admin=200)),
    "GET /v1/models": (("GET", "/v1/models", {}),
                       dict(none=401, wrong=401, query=200, other=200, ingest=403, admin=200)),
    "GET /v1/models/{model_id}": (("GET", "/v1/models/voice", {}),
                                  dict(none=401, wrong=401, query=200, other=200, ingest=403,
                                       admin=200)),
    "POST /v1/chat/completions": (
        ("POST", "/v1/chat/completions", {"json": CHAT}),
        dict(none=401, wrong=401, query=200, other=403, ingest=403, admin=200)),
    "POST /v1/responses": (
        ("POST", "/v1/responses", {"json": {"model": "base", "input": "q", "max_output_tokens": 1,
                                            "tools": [{"type": "file_search",
                                                       "vector_store_ids": ["docs"]}]}}),
        dict(none=401, wrong=401, query=200, other=403, ingest=403, admin=200)),
    **{f"{m} /v1/responses/{{response_id}}{tail}": (
        (m, f"/v1/responses/resp_{'0' * 32}{tail}", {}),
        dict(none=401, wrong=401, query=404, other=404, ingest=403, admin=404))
       for m, tail in (("GET", ""), ("DELETE", ""), ("GET", "/input_items"))},
    "POST /v1/embeddings": (
        ("POST", "/v1/embeddings", {"json": {"model": "all-MiniLM-L6-v2", "input": "hello"}}),
        dict(none=401, wrong=401, query=200, other=200, ingest=403, admin=200)),
    # feedback: on an answer this key received (another key's, or none: 404)
    "POST /v1/feedback": (
        ("POST", "/v1/feedback", {"json": {"response_id": "chatcmpl-none", "rating": "up"}}),
        dict(none=401, wrong=401, query=404, other=404, ingest=403, admin=404)),
    "GET /v1/feedback": (("GET", "/v1/feedback", {}),
                         dict(none=401, wrong=401, query=200, other=200, ingest=403, admin=200)),
    "POST /v1/synth": (
        ("POST", "/v1/synth", {"json": {"kind": "eval", "collection": "docs", "n": 1,
                                        "teacher": "none"}}),
        dict(none=401, wrong=401, query=403, other=403, ingest=403, admin=200)),
    "GET /v1/collections": (("GET", "/v1/collections", {}),
                            dict(none=401, wrong=401, query=200, other=200, ingest=403,
                                 admin=200)),
    "GET /v1/collections/{name}": (
        ("GET", "/v1/collections/docs", {}),
        dict(none=401, wrong=401, query=200, other=403, ingest=403, admin=200)),
    "POST /v1/collections/{name}/search": (
        ("POST", "/v1/collections/docs/search", {"json": {"query": "price", "k": 1}}),
        dict(none=401, wrong=401, query=200, other=403, ingest=403, admin=200)),
    "POST /v1/collections/{name}/documents": (
        ("POST", "/v1/collections/docs/documents", {"files": {"files": ("m.txt", b"matrix")}}),
        dict(none=401, wrong=401, query=403, other=403, ingest=202, admin=202)),
    "DELETE /v1/collections/{name}/documents/{doc}": (
        ("DELETE", "/v1/collections/docs/documents/no-such-doc", {}),
        dict(none=401, wrong=401, query=403, other=403, ingest=404, admin=404)),
    "GET /v1/adapters": (("GET", "/v1/adapters", {}),
                         dict(none=401, wrong=401, query=200, other=200, ingest=403, admin=200)),
    "GET /v1/adapters/{name}": (
        ("GET", "/v1/adapters/voice", {}),
        dict(none=401, wrong=401, query=200, other=200, ingest=403, admin=200)),
    "POST /v1/adapters": (
        ("POST", "/v1/adapters", {"data": {"name": "m"}}),
        dict(none=401, wrong=401, query=403, other=403, ingest=403, admin=422)),
    "GET /v1/jobs/{job_id}": (("GET", "/v1/jobs/job-missing", {}),
                              dict(none=401, wrong=401, query=404, other=404, ingest=404,
                                   admin=404)),
    "POST /v1/route": (("POST", "/v1/route", {"json": {"requirements": ["Prices change daily"]}}),
                       dict(none=401, wrong=401, query=200, other=200, ingest=403, admin=200)),
    # files: documents need ingest, fine-tune data train (admin: both)
    "POST /v1/files": (("POST", "/v1/files", {"files": {"file": ("m.txt", b"matrix")},
                                              "data": {"purpose": "user_data"}}),
                       dict(none=401, wrong=401, query=403, other=403, ingest=200, admin=200)),
    "GET /v1/files": (("GET", "/v1/files", {}),
                      dict(none=401, wrong=401, query=403, other=403, ingest=200, admin=200)),
    "GET /v1/files/{file_id}": (("GET", "/v1/files/file-missing", {}),
                                dict(none=401, wrong=401, query=403, other=403, ingest=404,
                                     admin=404)),
    "GET /v1/files/{file_id}/content": (("GET", "/v1/files/file-missing/content", {}),
                                        dict(none=401, wrong=401, query=403, other=403,
                                             ingest=404, admin=404)),
    "DELETE /v1/files/{file_id}": (("DELETE", "/v1/files/file-missing", {}),
                                   dict(none=401, wrong=401, query=403, other=403, ingest=404,
                                        admin=404)),
    # vector stores: changing needs ingest, reading query (a missing store: 404 once let in)
    "POST /v1/vector_stores": (
        ("POST", "/v1/vector_stores", {"json": {"name": "m", "ragtune": {"collection": "docs"}}}),
        dict(none=401, wrong=401, query=403, other=403, ingest=200, admin=200)),
    "GET /v1/vector_stores": (("GET", "/v1/vector_stores", {}),
                              dict(none=401, wrong=401, query=200, other=200, ingest=403,
                                   admin=200)),
    **{f"{m} /v1/vector_stores/{{vs_id}}{rule}": (
        (m, f"/v1/vector_stores/vs_{'0' * 24}{tail}", {"json": body} if m == "POST" else {}),
        dict(none=401, wrong=401, query=404 if scope == "query" else 403,
             other=404 if scope == "query" else 403, ingest=404 if scope == "ingest" else 403,
             admin=404))
       for m, rule, tail, body, scope in (
           ("GET", "", "", None, "query"), ("POST", "", "", {"name": "n"}, "ingest"),
           ("DELETE", "", "", None, "ingest"),
           ("POST", "/files", "/files", {"file_id": "file-x"}, "ingest"),
           ("GET", "/files", "/files", None, "query"),
           ("GET", "/files/{file_id}", "/files/file-x", None, "query"),
           ("DELETE", "/files/{file_id}", "/files/file-x", None, "ingest"),
           ("POST", "/file_batches", "/file_batches", {"file_ids": ["file-x"]}, "ingest"),
           ("GET", "/file_batches/{batch_id}", "/file_batches/vsfb_x", None, "query"),
           ("GET", "/file_batches/{batch_id}/files", "/file_batches/vsfb_x/files", None,
            "query"),
           ("POST", "/file_batches/{batch_id}/cancel", "/file_batches/vsfb_x/cancel", None,
            "ingest"),
           ("POST", "/files/{file_id}", "/files/file-x", {"attributes": {}}, "ingest"),
           ("POST", "/search", "/search", {"query": "q"}, "query"))},
    "POST /v1/fine_tuning/jobs": (
        ("POST", "/v1/fine_tuning/jobs", {"json": {"model": "base", "training_file": "file-x"}}),
        dict(none=401, wrong=401, query=403, other=403, ingest=403, admin=400)),
    "GET /v1/fine_tuning/jobs": (("GET", "/v1/fine_tuning/jobs", {}),
                                 dict(none=401, wrong=401, query=403, other=403, ingest=403,
                                      admin=200)),
    **{f"{m} /v1/fine_tuning/jobs/{{job_id}}{tail}": (
        (m, f"/v1/fine_tuning/jobs/ftjob-000000000000{tail}", {}),
        dict(none=401, wrong=401, query=403, other=403, ingest=403, admin=404))
       for m, tail in (("GET", ""), ("POST", "/cancel"), ("GET", "/events"),
                       ("GET", "/checkpoints"))},
}


@pytest.fixture(scope="module")
def keys(served):  # noqa: F811
    store = Keys(served.settings.keys_file)
    made = {
        "query": store.create(["query"], collections=["docs"])[0],
        "other": store.create(["query"], collections=["other"])[0],
        "ingest": store.create(["ingest"])[0],
        "admin": store.create(["admin"])[0],
        "wrong": "rt-not-a-key",
    }
    yield made
    served.settings.keys_file.unlink()


def test_the_table_covers_every_route(served):  # noqa: F811
    schema = httpx.get(served.url + "/openapi.json").json()
    in_schema = {f"{m.upper()} {p}" for p, ops in schema["paths"].items() for m in ops}
    assert in_schema - set(MATRIX) == set(), "routes in the OpenAPI schema without a matrix row"
    assert set(ACCESS) - set(MATRIX) == set(), "access rules without a matrix row"
    assert set(MATRIX) - set(ACCESS) == set(), "matrix rows for routes that do not exist"


@pytest.mark.parametrize("route", list(MATRIX))
def test_route_answers_each_credential_as_expected(route, served, keys):  # noqa: F811
    (method, path, kwargs), expected = MATRIX[route]
    got = {}
    for cred in CREDS:
        headers = {"Authorization": f"Bearer {keys[cred]}"} if cred != "none" else {}
        got[cred] = httpx.request(method, served.url + path, headers=headers, timeout=120,
                                  **kwargs).status_code
    assert got == expected, route
