"""Over a real uvicorn on loopback: bodies over the limit get their JSON 413 whatever the client (urllib, httpx,
curl) and size; overload is shed with 503 + Retry-After, never a 500; retried adds with an ``Idempotency-Key`` add
once. The server runs in a thread of the test process on the session's model (no second model load)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from collections import Counter

import httpx
import pytest

pytest.importorskip("fastapi")

from icl_fungi.serve import ServeSettings, create_app

from .conftest import QUERIES
from .serve_helpers import ThreadedServer

KEY = "limits-key-0c41"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def url(fungi_retriever, st_model, tmp_path_factory):
    path = fungi_retriever.save(tmp_path_factory.mktemp("limits") / "pool.icl")
    settings = ServeSettings(path, model=st_model, api_key=KEY, max_batch=4, max_queue=8, gather_ms=1)
    with ThreadedServer(create_app(settings)) as served:
        yield served


def _body(megabytes: int) -> bytes:
    """A well-formed add request of about ``megabytes`` MB."""
    text = json.dumps("x" * 1000).encode()
    n = megabytes * 1000
    return b'{"texts": [' + b", ".join([text] * n) + b'], "labels": [' + b", ".join([b'"a"'] * n) + b"]}"


def _urllib(url: str, body: bytes, headers: dict) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _httpx(url: str, body: bytes, headers: dict) -> tuple[int, dict]:
    r = httpx.post(url, content=body, headers=headers, timeout=120)
    return r.status_code, r.json()


def _curl(url: str, body: bytes, headers: dict, *, expect: bool = True) -> tuple[int, dict]:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    args = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")] + ([] if expect else ["-H", "Expect:"])
    done = subprocess.run(["curl", "-sS", "--data-binary", "@-", "-w", "\n%{http_code}", *args, url], input=body,
                          capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()
    text, _, status = done.stdout.decode().rpartition("\n")
    return int(status), json.loads(text)


CLIENTS = {"urllib": _urllib, "httpx": _httpx, "curl": _curl, "curl without Expect": lambda *a: _curl(*a, expect=False)}


@pytest.mark.parametrize("megabytes", [2, 5, 50])
def test_an_oversized_body_gets_its_json_413_whatever_the_client(url, megabytes):
    body = _body(megabytes)
    for name, send in CLIENTS.items():
        status, got = send(f"{url}/v1/examples", body, {**AUTH, **JSON})
        assert (status, got["error"]["type"], got["error"]["field"]) == (413, "too_large", "body"), name
    status, got = _urllib(f"{url}/v1/examples", body, JSON)  # refused for its missing key: the body is read all the same
    assert status == 401 and got["error"]["field"] == "authorization"
    assert httpx.post(f"{url}/v1/retrieve", json={"query": "card", "k": 1}, headers=AUTH).status_code == 200


async def _burst(port: int, n: int, bodies: list[bytes]) -> list[tuple[int, dict[str, str], bytes]]:
    """``n`` connections opened first, then each sends its request at once; every answer (status, headers, body)."""
    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> tuple[int, dict[str, str], bytes]:
        writer.write(b"POST /v1/retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer "
                     + KEY.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        status = int((await reader.readline()).split()[1])
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        data = await reader.readexactly(int(headers["content-length"]))
        writer.close()
        return status, headers, data

    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(n)]
    return await asyncio.gather(*(one(r, w, bodies[i % len(bodies)]) for i, (r, w) in enumerate(conns)))


def _metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", headers=AUTH, timeout=30).text
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def test_256_concurrent_clients_are_served_or_shed_with_503_and_retry_after(url):
    port = int(url.rsplit(":", 1)[1])
    rejected = _metric(url, "icl_fungi_rejected_total")
    bodies = [json.dumps({"query": q, "k": 3}).encode() for q in QUERIES]
    answers = asyncio.run(_burst(port, 256, bodies)) + asyncio.run(_burst(port, 256, bodies))
    statuses = Counter(status for status, _, _ in answers)
    assert set(statuses) == {200, 503}, statuses  # no 500, no timeout: each one served or shed
    for status, headers, data in answers:
        body = json.loads(data)
        if status == 200:
            assert len(body["examples"]) == 3
        else:
            assert body["error"]["type"] == "overloaded" and "waiting" in body["error"]["message"]
            assert int(headers["retry-after"]) >= 1 and int(headers["retry-after-ms"]) >= 1
    assert _metric(url, "icl_fungi_rejected_total") - rejected == statuses[503]
    assert _metric(url, "icl_fungi_queue_queries") == 0  # drained
    assert httpx.post(f"{url}/v1/prompt", json={"query": "card", "k": 2}, headers=AUTH).status_code == 200


def test_a_retried_add_with_the_same_idempotency_key_adds_once(url):
    add = {"texts": ["my virtual card expired", "renew my virtual card"], "labels": ["card", "card"]}
    size = httpx.get(f"{url}/readyz").json()["pool_size"]
    with httpx.Client(base_url=url, headers=AUTH, timeout=120) as c:
        first = c.post("/v1/examples", json=add, headers={"Idempotency-Key": "add-7d1e"})
        assert first.status_code == 200 and first.json()["ids"] == [size, size + 1] and "idempotent-replayed" not in first.headers
        again = c.post("/v1/examples", json=add, headers={"Idempotency-Key": "add-7d1e"})
        assert again.status_code == 200 and again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
        other = c.post("/v1/examples", json={**add, "labels": ["card", "other"]}, headers={"Idempotency-Key": "add-7d1e"})
        assert other.status_code == 422 and other.json()["error"]["type"] == "idempotency_key_reused"
        assert "add-7d1e" in other.json()["error"]["message"] and other.json()["error"]["field"] == "idempotency-key"
        for bad in ("", "has space", "x" * 256):
            r = c.post("/v1/examples", json=add, headers={"Idempotency-Key": bad})
            assert r.status_code == 422 and r.json()["error"]["field"] == "idempotency-key", bad
        same: list[httpx.Response] = []  # ten concurrent tries of one new add
        tries = [threading.Thread(target=lambda: same.append(httpx.post(
            f"{url}/v1/examples", json={"texts": ["card renewal fee"], "labels": ["card"]}, headers={**AUTH, "Idempotency-Key": "k-8"},
            timeout=120))) for _ in range(10)]
        for t in tries:
            t.start()
        for t in tries:
            t.join()
        assert {r.status_code for r in same} == {200} and len({tuple(r.json()["ids"]) for r in same}) == 1
        assert sum("idempotent-replayed" not in r.headers for r in same) == 1
        assert c.get("/readyz").json()["pool_size"] == size + 3
        assert c.post("/v1/examples", json=add).json()["ids"] == [size + 3, size + 4]  # no key: a new add each time
