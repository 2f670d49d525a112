"""A Slack-compatible incoming webhook on loopback, for tests and the demo.

It answers as Slack does: `200 ok` to a JSON payload with `text` or `blocks`, `400
invalid_payload` to anything else, `400 invalid_blocks` to blocks Slack would refuse (too
many, a type other than section or context, a section text over 3,000 characters), and it
keeps every accepted payload in memory.

    with receiving_webhook() as hook:
        post(hook.url, payload, 5)             # hook.url carries a token path, like Slack's
        hook.received()                        # [payload, ...], oldest first
        hook.fail(count=2, status=503)         # the next 2 posts answer 503

Over HTTP, for the detached one (`python -m sandbox.webhook --state-dir D`, started by
`start_detached` / `stop_detached`, which writes D/webhook.json with pid, url and base_url):

    GET    /received                          the accepted payloads, a JSON list
    DELETE /received                          forget them
    POST   /fail?count=N&status=S[&retry_after=SECONDS]
                                              the next N posts answer S (with Retry-After)
    GET    /fail                              {"left", "status", "retry_after", "failed"}
    POST   /<any other path>                  a webhook post
"""

from __future__ import annotations

import argparse
import json
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from sandbox import httpserver

INFO_FILE = "webhook.json"
LOG_FILE = "webhook.log"
DETACHED = httpserver.DetachedProcess("sandbox.webhook", INFO_FILE, LOG_FILE)

# What Slack refuses (api.slack.com/reference/block-kit/blocks): the receiver refuses it too,
# so a payload our renderer builds is known to pass Slack's checks as well as ours.
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_CONTEXT_ELEMENTS = 10
BLOCK_TYPES = ("section", "context")
RECEIVED_LIMIT = 10_000  # oldest first out: a detached receiver may run for the whole demo


class Inbox:
    """The accepted payloads and the failures still to answer, shared by the app's requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: list[Any] = []
        self._left = 0
        self._status = 503
        self._retry_after: float | None = None
        self._failed = 0

    def accept(self, body: Any) -> None:
        with self._lock:
            self._received.append(body)
            del self._received[:-RECEIVED_LIMIT]

    def received(self) -> list[Any]:
        with self._lock:
            return list(self._received)

    def clear(self) -> int:
        with self._lock:
            count, self._received = len(self._received), []
            return count

    def fail(self, count: int, status: int, retry_after: float | None = None) -> None:
        if count < 0 or not 400 <= status <= 599:
            raise ValueError(f"fail(count={count}, status={status}): give count >= 0 and a status 400-599")
        with self._lock:
            self._left, self._status, self._retry_after = count, status, retry_after

    def next_failure(self) -> tuple[int, float | None] | None:
        """The status (and Retry-After) this post answers, counted down; None: accept it."""
        with self._lock:
            if self._left == 0:
                return None
            self._left -= 1
            self._failed += 1
            return self._status, self._retry_after

    def failures(self) -> dict[str, Any]:
        with self._lock:
            return {"left": self._left, "status": self._status, "retry_after": self._retry_after,
                    "failed": self._failed}


def invalid_blocks(blocks: Any) -> str | None:
    """Why Slack would refuse these blocks, or None."""
    if not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS:
        return f"blocks must be a list of at most {MAX_BLOCKS}"
    for i, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in BLOCK_TYPES:
            return f"block {i}: type {kind!r} is not one of {', '.join(BLOCK_TYPES)}"
        if kind == "section":
            text = block.get("text") or {}
            if text.get("type") not in ("mrkdwn", "plain_text") or not isinstance(text.get("text"), str):
                return f"block {i}: a section needs a text object of type mrkdwn or plain_text"
            if not 1 <= len(text["text"]) <= MAX_SECTION_TEXT:
                return f"block {i}: section text of {len(text['text'])} characters (1 to {MAX_SECTION_TEXT})"
        else:
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= MAX_CONTEXT_ELEMENTS:
                return f"block {i}: a context needs 1 to {MAX_CONTEXT_ELEMENTS} elements"
    return None


def webhook_app(inbox: Inbox) -> Starlette:
    async def post(request: Request) -> Response:
        failure = inbox.next_failure()
        if failure is not None:
            status, retry_after = failure
            headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
            return PlainTextResponse("injected_failure", status_code=status, headers=headers)
        try:
            body = json.loads(await request.body())
        except ValueError:
            return PlainTextResponse("invalid_payload", status_code=400)
        if not isinstance(body, dict) or not (body.get("text") or body.get("blocks")):
            return PlainTextResponse("invalid_payload" if not isinstance(body, dict) else "no_text", status_code=400)
        if "blocks" in body and invalid_blocks(body["blocks"]) is not None:
            return PlainTextResponse(f"invalid_blocks: {invalid_blocks(body['blocks'])}", status_code=400)
        inbox.accept(body)
        return PlainTextResponse("ok")

    async def received(request: Request) -> JSONResponse:
        return JSONResponse(inbox.received())

    async def clear(request: Request) -> JSONResponse:
        return JSONResponse({"removed": inbox.clear()})

    async def fail(request: Request) -> JSONResponse:
        q = request.query_params
        try:
            retry_after = float(q["retry_after"]) if "retry_after" in q else None
            inbox.fail(int(q.get("count", "1")), int(q.get("status", "503")), retry_after)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        return JSONResponse(inbox.failures())

    async def failures(request: Request) -> JSONResponse:
        return JSONResponse(inbox.failures())

    return Starlette(routes=[
        Route("/received", received, methods=["GET"]),
        Route("/received", clear, methods=["DELETE"]),
        Route("/fail", fail, methods=["POST"]),
        Route("/fail", failures, methods=["GET"]),
        Route("/{path:path}", post, methods=["POST"]),
    ])


class WebhookReceiver(httpserver.LoopbackServer):
    """The receiver in this process. `url` is the webhook's (base URL and a random token path,
    so a test can check that the token never shows); `base_url` is the server's."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> None:
        self.inbox = Inbox()
        self.path = f"/services/T0SANDBOX/B0SANDBOX/{token or secrets.token_hex(12)}"
        self._http = httpserver.ThreadedServer(webhook_app(self.inbox), host, port, name="sandbox-webhook")

    @property
    def base_url(self) -> str:
        return self._http.url

    @property
    def url(self) -> str:
        return f"{self._http.url}{self.path}"

    def received(self) -> list[Any]:
        return self.inbox.received()

    def fail(self, count: int, status: int = 503, retry_after: float | None = None) -> None:
        """The next `count` posts answer `status` (with `Retry-After: retry_after`)."""
        self.inbox.fail(count, status, retry_after)

    def failed(self) -> int:
        """How many posts answered a failure so far."""
        return int(self.inbox.failures()["failed"])

    def clear(self) -> None:
        self.inbox.clear()

    def start(self) -> WebhookReceiver:
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()


def receiving_webhook(**options: Any) -> WebhookReceiver:
    """A WebhookReceiver that `with` starts and stops; options are host, port and token."""
    return WebhookReceiver(**options)


# --- detached ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DetachedWebhook(httpserver.DetachedServer):
    """`url` is the webhook's (with its token path); `base_url` serves /received and /fail."""

    base_url: str


def start_detached(state_dir: str | Path, *, port: int = 0, token: str | None = None) -> DetachedWebhook:
    """Start `python -m sandbox.webhook` in its own session; returns once it serves."""
    info = DETACHED.start(state_dir, {"--port": port, "--token": token})
    return DetachedWebhook(info["pid"], info["url"], Path(state_dir), info["base_url"])


def stop_detached(state_dir: str | Path, *, timeout: float = 10) -> bool:
    """Stop the detached receiver of `state_dir`; False if none was running."""
    return DETACHED.stop(state_dir, timeout=timeout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.webhook",
                                     description="Slack-compatible webhook receiver for the sandbox")
    parser.add_argument("--state-dir", type=Path, required=True, help=f"where {INFO_FILE} goes")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    parser.add_argument("--token", help="the last part of the webhook's path; random if not given")
    args = parser.parse_args(argv)

    state = args.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    receiver = WebhookReceiver(host=args.host, port=args.port, token=args.token).start()
    httpserver.serve_until_signal(receiver, state / INFO_FILE, base_url=receiver.base_url)


if __name__ == "__main__":
    main()
