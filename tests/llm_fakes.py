"""Loopback test servers: a deterministic fake OpenAI endpoint and a fault-injecting proxy."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from icl_fungi.evaluation.harness import EvalSettings


class _Server:
    def __init__(self, handler_cls) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
        self.httpd.owner = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _reply(self, status: int, data: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


class FakeLLM(_Server):
    """Answers with the label of the example nearest the query (the last ``Intent:`` line), or with
    ``answer(prompt)`` when given."""

    def __init__(self, delay: float = 0.0, answer=None) -> None:
        super().__init__(_FakeHandler)
        self.delay = delay
        self.answer = answer
        self.requests: Counter = Counter()
        self.lock = threading.Lock()


class _FakeHandler(_Handler):
    def do_GET(self) -> None:
        self._send(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})

    def do_POST(self) -> None:
        owner = self.server.owner
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body.get("prompt") or "\n".join(m["content"] for m in body.get("messages", []))
        with owner.lock:
            owner.requests[hashlib.sha256(prompt.encode()).hexdigest()] += 1
        time.sleep(owner.delay)
        labels = re.findall(r"Intent: (\S+)", prompt)
        text = " " + labels[-1] if labels else " unknown"
        if owner.answer is not None:
            text = owner.answer(prompt)
        usage = {"prompt_tokens": len(prompt) // 4, "completion_tokens": 2, "total_tokens": len(prompt) // 4 + 2}
        if "messages" in body:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": "fake", "choices": [choice], "usage": usage})
        else:
            choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
            self._send(200, {"id": "x", "object": "text_completion", "created": 0, "model": "fake", "choices": [choice], "usage": usage})

    def _send(self, status: int, payload: dict) -> None:
        self._reply(status, json.dumps(payload).encode())


class FaultProxy(_Server):
    """Forwards to ``upstream``; POSTs cycle through: 429 + Retry-After, 503, dropped connection, slow, normal."""

    PLAN = ("429", "503", "drop", "slow", "ok")

    def __init__(self, upstream: str, slow_s: float = 0.5) -> None:
        super().__init__(_ProxyHandler)
        m = re.match(r"http://([^:/]+):(\d+)", upstream)
        self.upstream = (m.group(1), int(m.group(2)))
        self.slow_s = slow_s
        self.count = 0
        self.faults: Counter = Counter()
        self.lock = threading.Lock()


class _ProxyHandler(_Handler):
    def do_POST(self) -> None:
        owner = self.server.owner
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with owner.lock:
            action = owner.PLAN[owner.count % len(owner.PLAN)]
            owner.count += 1
            owner.faults[action] += 1
        if action == "429":
            return self._reply(429, b'{"error": "rate limited"}', {"Retry-After": "0.2"})
        if action == "503":
            return self._reply(503, b'{"error": "unavailable"}')
        if action == "drop":
            self.close_connection = True
            self.connection.shutdown(2)
            return None
        if action == "slow":
            time.sleep(owner.slow_s)
        conn = http.client.HTTPConnection(*owner.upstream, timeout=300)
        conn.request("POST", self.path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return self._reply(resp.status, data)


def eval_settings(intent_data, out, base_url, **kw) -> EvalSettings:
    base = {"data": str(intent_data), "out": str(out), "selectors": ("embedding", "random"), "k": 5, "limit": 20,
            "base_url": base_url, "model": "fake", "show_progress": False, "timeout": 10, "max_retries": 6}
    base.update(kw)
    return EvalSettings(**base)


def report_records(report):
    return [{k: r[k] for k in ("selector", "query_index", "reply", "prediction", "correct", "examples")} for r in report["records"]]
