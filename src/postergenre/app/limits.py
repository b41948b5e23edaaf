"""Request bodies capped while they stream in, before any parsing (ASGI middleware), and the
words that say by how much a file is over its cap."""

from __future__ import annotations

import json

MB = 1_000_000  # decimal megabytes, as file managers (and the page) count them


def over_cap(size: int, cap: int) -> str:
    """``"20.0 MB, above the 10 MB cap"``, with as many decimals as it takes to differ from the cap."""
    digits = 1
    while round(size / MB, digits) <= round(cap / MB, digits) and digits < 6:
        digits += 1
    return f"{size / MB:.{digits}f} MB, above the {cap / MB:g} MB cap"


class BodyLimit:
    """ASGI middleware: 413 as soon as a request body passes ``max_bytes`` (declared or streamed)."""

    def __init__(self, app, max_bytes: int, hint: str = ""):
        self.app, self.max_bytes, self.hint = app, max_bytes, hint

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _send_json(send, 413, {"error": f"request body is {over_cap(int(declared), self.max_bytes)}{self.hint}"})
        seen, over, replaced = 0, False, False

        async def counted_receive():
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True  # stop reading: the app sees a disconnect and answers an error...
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal replaced
            if not over:
                return await send(message)
            if not replaced:  # ...which is replaced by the 413 the client should get
                replaced = True
                await _send_json(send, 413, {"error": f"request body is above the {self.max_bytes / MB:g} MB cap{self.hint}"})

        await self.app(scope, counted_receive, guarded_send)


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
