"""Concurrent clients of ``llama serve``, run as a script by tests/test_serve.py: a process of their own.

The test process cannot run them on an event loop of its own: where a browser test of the same
worker holds Playwright's sync API open, an event loop is already running in that thread, and
``asyncio.run`` refuses. Reads ``{"url", "key", "bodies", "leaver"}`` as JSON on stdin; prints
``{"answers": [[text, finish_reason], ...], "read": chunks}`` as JSON: each body's answer, and how
many chunks the client that hangs up read of the leaver's reply before it did.
"""

from __future__ import annotations

import asyncio
import json
import sys

import httpx


async def ask(http: httpx.AsyncClient, body: dict) -> tuple[str, str]:
    """``(text, finish_reason)`` of one request, streamed (server-sent events) or whole."""
    path = "v1/chat/completions" if "messages" in body else "v1/completions"
    if not body.get("stream"):
        response = await http.post(path, json=body)
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        return choice["text"], choice["finish_reason"]
    text, finish = "", None
    async with http.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choice = json.loads(line[6:])["choices"][0]
                text, finish = text + choice["text"], choice["finish_reason"] or finish
    return text, finish


async def go_away(http: httpx.AsyncClient, body: dict) -> int:
    """Read two chunks of a long streamed reply, then hang up; returns the chunks read."""
    read = 0
    async with http.stream("POST", "v1/completions", json=body) as response:
        async for line in response.aiter_lines():
            read += line.startswith("data: ")
            if read == 2:
                break
    return read


async def clients(job: dict) -> dict:
    headers = {"Authorization": f"Bearer {job['key']}"}
    async with httpx.AsyncClient(base_url=job["url"], headers=headers, timeout=job.get("timeout", 600)) as http:
        *answers, read = await asyncio.gather(*[ask(http, b) for b in job["bodies"]], go_away(http, job["leaver"]))
    return {"answers": answers, "read": read}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(clients(json.load(sys.stdin)))))
