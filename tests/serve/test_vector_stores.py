"""Vector stores over collections, through the official `openai` SDK against a real server:
files uploaded with the Files API are ingested into the store's collection, searched, and found
by `file_search` in the Responses API under their own file ids."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.serve.test_api import served  # noqa: F401  (the module's server: tiny model, docs)


@pytest.fixture
def client(served):  # noqa: F811
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)


def test_a_store_ingests_files_searches_them_and_file_search_cites_them(client, served):  # noqa: F811
    store = client.vector_stores.create(name="handbook", metadata={"team": "support"})
    assert store.object == "vector_store" and store.file_counts.total == 0
    refund = client.files.create(file=("refunds.md", b"# Refunds\n\nRefunds are paid within "
                                       b"14 days of a return.\n"), purpose="assistants")
    ship = client.files.create(file=("shipping.md", b"# Shipping\n\nParcels to Norway take six "
                                     b"working days.\n"), purpose="user_data")
    done = client.vector_stores.files.create_and_poll(vector_store_id=store.id,
                                                      file_id=refund.id, poll_interval_ms=200)
    assert done.status == "completed" and done.usage_bytes == refund.bytes
    batch = client.vector_stores.file_batches.create_and_poll(
        vector_store_id=store.id, file_ids=[ship.id], poll_interval_ms=200)
    assert batch.status == "completed" and batch.file_counts.completed == 1
    store = client.vector_stores.retrieve(store.id)
    assert store.file_counts.completed == 2 and store.status == "completed"
    assert store.usage_bytes == refund.bytes + ship.bytes
    found = client.vector_stores.search(store.id, query="How long do refunds take?",
                                        max_num_results=1)
    (hit,) = found.data
    assert hit.file_id == refund.id and hit.filename == "refunds.md"
    assert "14 days" in hit.content[0].text and hit.attributes["ingested_at"] > 0
    r = client.responses.create(
        model="base", input="How long do refunds take?", max_output_tokens=4,
        tools=[{"type": "file_search", "vector_store_ids": [store.id], "max_num_results": 1}],
        include=["file_search_call.results"])
    assert r.output[0].results[0].file_id == refund.id
    # an existing collection exposed as a store
    docs = httpx.post(served.url + "/v1/vector_stores", json={
        "name": "docs", "ragtune": {"collection": "docs"}}).json()
    assert client.vector_stores.search(docs["id"], query="Basic plan").data
    # update, detach, delete: the store's own collection goes, the exposed one stays
    assert client.vector_stores.update(store.id, name="renamed").name == "renamed"
    assert client.vector_stores.files.delete(file_id=ship.id, vector_store_id=store.id).deleted
    assert [f.id for f in client.vector_stores.files.list(store.id)] == [refund.id]
    assert not any(h.file_id == ship.id for h in client.vector_stores.search(
        store.id, query="Parcels to Norway").data)
    assert client.vector_stores.delete(store.id).deleted
    assert not (served.settings.collections_dir / f"vs-{store.id[3:]}").exists()
    assert client.vector_stores.delete(docs["id"]).deleted
    assert (served.settings.collections_dir / "docs").exists()
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.retrieve(store.id)


def test_a_file_that_cannot_be_ingested_fails_with_its_reason(client):
    store = client.vector_stores.create(name="bad")
    blob = client.files.create(file=("blob.bin", b"\x00\x01binary"), purpose="assistants")
    f = client.vector_stores.files.create_and_poll(vector_store_id=store.id, file_id=blob.id,
                                                   poll_interval_ms=200)
    assert f.status == "failed" and "blob.bin" in f.last_error.message
    assert client.vector_stores.retrieve(store.id).file_counts.failed == 1


@pytest.mark.parametrize("path, body, param", [
    ("", {"name": "x", "expires_after": {"anchor": "created_at", "days": 1}}, "expires_after"),
    ("", {"name": "x", "expires_after": {"anchor": "last_active_at", "days": 0}},
     "expires_after"),
    ("", {"chunking_strategy": {"type": "static"}}, "chunking_strategy"),
    ("", {"chunking_strategy": {"type": "static", "static": {
        "max_chunk_size_tokens": 200, "chunk_overlap_tokens": 101}}}, "chunking_strategy"),
    ("/{vs}/files", {"file_id": "{doc}", "chunking_strategy": {"type": "static", "static": {
        "max_chunk_size_tokens": 4096, "chunk_overlap_tokens": 0}}}, "chunking_strategy"),
    ("/{vs}/files", {"file_id": "file-nope"}, None),
    ("/{vs}/files", {"file_id": "{ft}"}, "file_id"),
    ("/{vs}/files", {"file_id": "{doc}", "attributes": {"a-b": 1}}, "attributes"),
    ("/{vs}/files", {"file_id": "{doc}", "attributes": {"x": [1]}}, "attributes"),
    ("/{vs}/search", {"query": "x", "rewrite_query": True}, "rewrite_query"),
    ("/{vs}/search", {"query": ""}, "query"),
])
def test_what_is_not_served_is_refused_by_name(client, served, path, body, param):  # noqa: F811
    vs = client.vector_stores.create(name="refusals").id
    ft = client.files.create(file=("t.jsonl", b'{"messages": [{"role": "user", "content": "q"}, '
                                   b'{"role": "assistant", "content": "a"}]}\n'),
                             purpose="fine-tune").id
    doc = client.files.create(file=("d.md", b"text"), purpose="assistants").id
    body = {k: (v.format(ft=ft, doc=doc) if isinstance(v, str) else v) for k, v in body.items()}
    r = httpx.post(served.url + "/v1/vector_stores" + path.format(vs=vs), json=body)
    assert r.status_code in (400, 404), r.text
    assert r.json()["error"]["param"] == param


def test_file_attributes_filter_search_and_file_search(client):
    store = client.vector_stores.create(name="attrs")
    made = {}
    for year, region in ((2023, "eu"), (2024, "us")):
        f = client.files.create(file=(f"report-{year}.md", f"# Report\n\nRevenue grew in "
                                      f"{year}.\n".encode()), purpose="assistants")
        done = client.vector_stores.files.create_and_poll(
            vector_store_id=store.id, file_id=f.id, poll_interval_ms=200,
            attributes={"year": year, "region": region, "final": year == 2024})
        assert done.status == "completed" and done.attributes["year"] == year
        made[year] = f.id
    for flt, year in (({"type": "eq", "key": "year", "value": 2023}, 2023),
                      ({"type": "and", "filters": [{"type": "eq", "key": "region", "value": "us"},
                                                   {"type": "eq", "key": "final",
                                                    "value": True}]}, 2024)):
        hits = client.vector_stores.search(store.id, query="revenue", filters=flt).data
        assert {h.file_id for h in hits} == {made[year]}
        assert hits[0].attributes["year"] == year
        r = client.responses.create(
            model="base", input="How did revenue do?", max_output_tokens=2,
            include=["file_search_call.results"],
            tools=[{"type": "file_search", "vector_store_ids": [store.id], "filters": flt}])
        assert {x.file_id for x in r.output[0].results} == {made[year]}
        assert r.output[0].results[0].attributes["region"] in ("eu", "us")
    none = client.vector_stores.search(store.id, query="revenue", filters={
        "type": "eq", "key": "region", "value": "e*"}).data
    assert none == []  # an equality, not a glob


def test_attributes_change_after_attach_and_every_chunk_carries_them(client):
    store = client.vector_stores.create(name="update")
    f = client.files.create(file=("memo.md", b"# Memo\n\nThe office moves in May.\n"),
                            purpose="assistants")
    client.vector_stores.files.create_and_poll(vector_store_id=store.id, file_id=f.id,
                                               attributes={"draft": True}, poll_interval_ms=200)
    updated = client.vector_stores.files.update(file_id=f.id, vector_store_id=store.id,
                                                attributes={"draft": False, "year": 2026})
    assert updated.attributes == {"draft": False, "year": 2026}
    done = client.vector_stores.files.poll(f.id, vector_store_id=store.id, poll_interval_ms=200)
    assert done.status == "completed"
    hits = client.vector_stores.search(store.id, query="office move", filters={
        "type": "eq", "key": "draft", "value": False}).data
    assert [h.file_id for h in hits] == [f.id] and hits[0].attributes["year"] == 2026
    assert not client.vector_stores.search(store.id, query="office move", filters={
        "type": "eq", "key": "draft", "value": True}).data  # the old attributes are gone
    with pytest.raises(openai.BadRequestError):
        client.vector_stores.files.update(file_id=f.id, vector_store_id=store.id,
                                          attributes={"x": {"nested": 1}})


def test_a_batch_lists_its_files_and_a_cancel_stops_the_waiting_ones(client, served):  # noqa: F811
    store = client.vector_stores.create(name="batches")
    ids = [client.files.create(file=(f"n{i}.md", f"# Note {i}\n\nItem {i} ships.\n".encode()),
                               purpose="assistants").id for i in range(3)]
    # the job worker is held busy, so the batch's files wait in its queue
    gate = __import__("threading").Event()
    served.app.state.ragtune.jobs.submit("hold", {}, lambda job: gate.wait(30))
    batch = client.vector_stores.file_batches.create(vector_store_id=store.id, file_ids=ids)
    cancelled = client.vector_stores.file_batches.cancel(batch.id, vector_store_id=store.id)
    gate.set()
    assert cancelled.status == "cancelled" and cancelled.file_counts.cancelled == 3
    listed = client.vector_stores.file_batches.list_files(batch.id, vector_store_id=store.id)
    assert sorted(x.id for x in listed) == sorted(ids)
    assert {x.status for x in listed} == {"cancelled"}
    only = client.vector_stores.file_batches.list_files(batch.id, vector_store_id=store.id,
                                                         filter="completed")
    assert list(only) == []
    again = client.vector_stores.file_batches.create_and_poll(
        vector_store_id=store.id, file_ids=ids[:1], poll_interval_ms=200)
    assert again.status == "completed" and again.file_counts.completed == 1
    assert client.vector_stores.search(store.id, query="Item 0 ships").data[0].file_id == ids[0]
    assert not any(h.file_id in ids[1:] for h in client.vector_stores.search(
        store.id, query="Item ships", max_num_results=10).data)


def _chunks_of(served, store_id: str, file_id: str) -> list[str]:  # noqa: F811
    from ragtune.ingest.collection import Collection

    col = Collection.open(f"vs-{store_id[3:]}", served.settings, create=False)
    try:
        return [text for source, text in col.chunks() if file_id in source]
    finally:
        col.close()


def test_a_static_chunking_strategy_sizes_that_files_chunks(client, served):  # noqa: F811
    text = "\n\n".join(f"Section {i}. " + " ".join(f"word{i}x{j}" for j in range(60))
                       for i in range(8)).encode()
    store = client.vector_stores.create(name="chunking")
    f = client.files.create(file=("long.md", text), purpose="assistants")
    auto = client.vector_stores.files.create_and_poll(vector_store_id=store.id, file_id=f.id,
                                                      poll_interval_ms=200)
    assert auto.chunking_strategy.static.max_chunk_size_tokens == served.settings.chunk_tokens
    by_auto = _chunks_of(served, store.id, f.id)
    client.vector_stores.files.delete(file_id=f.id, vector_store_id=store.id)
    small = {"type": "static", "static": {"max_chunk_size_tokens": 100,
                                          "chunk_overlap_tokens": 0}}
    done = client.vector_stores.files.create_and_poll(
        vector_store_id=store.id, file_id=f.id, chunking_strategy=small, poll_interval_ms=200)
    assert done.status == "completed"
    assert done.chunking_strategy.static.max_chunk_size_tokens == 100
    by_static = _chunks_of(served, store.id, f.id)
    assert len(by_static) > len(by_auto)
    # new attributes keep the file's own chunking
    client.vector_stores.files.update(file_id=f.id, vector_store_id=store.id,
                                      attributes={"v": 2})
    client.vector_stores.files.poll(f.id, vector_store_id=store.id, poll_interval_ms=200)
    assert len(_chunks_of(served, store.id, f.id)) == len(by_static)
    assert client.vector_stores.files.retrieve(
        f.id, vector_store_id=store.id).chunking_strategy.static.max_chunk_size_tokens == 100
    # attached again with auto: the same bytes, another chunking, so chunked again
    client.vector_stores.files.create_and_poll(vector_store_id=store.id, file_id=f.id,
                                               poll_interval_ms=200)
    assert _chunks_of(served, store.id, f.id) == by_auto


def test_a_store_expires_after_its_days_without_use(client, served):  # noqa: F811
    import json
    import time

    store = client.vector_stores.create(
        name="expiring", expires_after={"anchor": "last_active_at", "days": 2})
    assert store.expires_after.days == 2 and store.status == "completed"
    assert store.expires_at == store.last_active_at + 2 * 86400
    f = client.files.create(file=("n.md", b"# Note\n\nThe depot opens at six.\n"),
                            purpose="assistants")
    client.vector_stores.files.create_and_poll(vector_store_id=store.id, file_id=f.id,
                                               poll_interval_ms=200)
    assert client.vector_stores.search(store.id, query="depot").data
    # three days without use (the record's clock moved back)
    path = served.settings.home / "vector_stores" / f"{store.id}.json"
    rec = json.loads(path.read_text())
    rec["last_active_at"] = int(time.time()) - 3 * 86400
    path.write_text(json.dumps(rec))
    assert client.vector_stores.retrieve(store.id).status == "expired"
    for use in (lambda: client.vector_stores.search(store.id, query="depot"),
                lambda: client.vector_stores.files.create(vector_store_id=store.id, file_id=f.id),
                lambda: client.responses.create(model="base", input="depot?", max_output_tokens=2,
                                                tools=[{"type": "file_search",
                                                        "vector_store_ids": [store.id]}])):
        with pytest.raises(openai.BadRequestError, match="expired"):
            use()
    revived = client.vector_stores.update(store.id, expires_after=None)
    assert revived.status == "completed" and revived.expires_at is None
    assert client.vector_stores.search(store.id, query="depot").data
