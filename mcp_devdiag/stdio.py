"""The stdio transport, hardened: every line a client sends gets an answer or reaches the SDK.

The SDK's ``stdio_server`` parses each line with ``jsonrpc_message_adapter.validate_json`` and, when
that fails, puts the exception on the read stream; the server's dispatcher
(``mcp.shared.jsonrpc_dispatcher``) logs it at DEBUG and drops it, so the client waits for its own
timeout. Lines it drops: a lone surrogate escape (``"\\ud800"``), nesting deeper than ~200 levels,
an integer of more than 4,300 digits, any syntax error, valid JSON that is not a JSON-RPC message
(an array, a batch, ``"jsonrpc": "1.0"``); a request whose id is ``true``, ``1.5`` or ``null`` is
taken for a notification and never answered. It also reads a line of any length into memory.

Here each line is read (at most ``MAX_MESSAGE_BYTES``), parsed with bounded depth and integer size,
lone surrogates become U+FFFD, and only a line the SDK will accept is handed to it (through its own
``stdio_server``, which keeps its stdout writer and framing). Any other line is answered on stdout
through the SDK's write stream: -32700 Parse error, or -32600 Invalid Request, with the request's id
when it can be read from the well-formed start of the line, else null. Blank lines are skipped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
from collections.abc import AsyncIterator, Iterator
from json.decoder import scanstring  # type: ignore[attr-defined]  # json's own C scanner, not in typeshed
from typing import TYPE_CHECKING, Any, BinaryIO

import anyio
import anyio.to_thread
import mcp_types as types
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from mcp_devdiag import safejson

if TYPE_CHECKING:
    from mcp.server import MCPServer

log = logging.getLogger(__name__)

# diagnose refuses more than 1,000,000 characters of input; as \uXXXX escapes that is 6 MB.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
# Tool arguments are flat; the SDK's parser stops at ~200 levels, so anything we pass it parses.
MAX_DEPTH = 100
_ID_SCAN_BYTES = 64 * 1024  # how much of an over-long line is searched for its id
_WS = re.compile(r"[ \t\n\r]*")
_SCALAR = re.compile(r"-?[0-9][0-9.eE+-]*|true|false|null|NaN|-?Infinity")
_ID_INT = re.compile(r"-?(?:0|[1-9][0-9]{0,17})(?![0-9.eE])")
_STRUCTURE = re.compile(r'["\[\]{}]')
_HINT = "send one JSON-RPC 2.0 message per line, as UTF-8 JSON"


def _error(code: int, message: str, request_id: str | int | None) -> types.JSONRPCError:
    return types.JSONRPCError(jsonrpc="2.0", id=request_id, error=types.ErrorData(code=code, message=message))


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _skip_value(text: str, pos: int) -> int:
    """The end of the JSON value at ``pos``; nested values are skipped by counting, not recursing."""
    if text[pos] == '"':
        return scanstring(text, pos + 1)[1]
    if text[pos] not in "[{":
        scalar = _SCALAR.match(text, pos)
        if scalar is None:
            raise ValueError("not a JSON value")
        return scalar.end()
    depth = 0
    while (mark := _STRUCTURE.search(text, pos)) is not None:
        pos = mark.end()
        if mark.group() == '"':
            pos = scanstring(text, pos)[1]
            continue
        depth += 1 if mark.group() in "[{" else -1
        if depth == 0:
            return pos
    raise ValueError("unterminated")


def _skip_ws(text: str, pos: int) -> int:
    """Where the JSON whitespace from ``pos`` ends (``_WS`` matches everywhere, if only the empty string)."""
    match = _WS.match(text, pos)
    assert match is not None
    return match.end()


def recover_id(text: str) -> str | int | None:
    """The id of a line that could not be parsed whole, read only from the well-formed members at
    the start of its top-level object; None unless exactly one complete ``"id"`` member (a string
    or an integer) is among them."""
    ids: list[Any] = []
    try:
        pos = _skip_ws(text, 0)
        if text[pos] != "{":
            return None
        pos = _skip_ws(text, pos + 1)
        while text[pos] == '"':
            key, pos = scanstring(text, pos + 1)
            pos = _skip_ws(text, pos)
            if text[pos] != ":":
                break
            start = _skip_ws(text, pos + 1)
            end = _skip_value(text, start)
            pos = _skip_ws(text, end)
            if text[pos] not in ",}":
                break  # the member is not complete: nothing in it is trusted
            if key == "id":
                value: Any = None
                if text[start] == '"':
                    value = safejson.replace_lone_surrogates(scanstring(text, start + 1)[0])
                elif (number := _ID_INT.match(text, start)) is not None and number.end() == end:
                    value = int(number.group())
                ids.append(value)
            if text[pos] == "}":
                break
            pos = _skip_ws(text, pos + 1)
    except (IndexError, ValueError):
        pass  # the line ends or breaks here: what was read before still counts
    return ids[0] if len(ids) == 1 else None


def check_line(text: str) -> str | types.JSONRPCError | None:
    """The line to hand to the SDK, the error to answer instead, or None for a blank line."""
    if not text.strip():
        return None
    try:
        data = safejson.loads(text, max_depth=MAX_DEPTH)
    except ValueError as error:
        return _error(types.PARSE_ERROR, f"Parse error: {error}; {_HINT}", recover_id(text))
    if safejson.may_hold_lone_surrogates(text) and safejson.first_lone_surrogate(data) is not None:
        # Not text, and the SDK's parser refuses it: the documented U+FFFD instead.
        data = safejson.replace_lone_surrogates(data)
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    request = isinstance(data, dict) and "method" in data
    request_id = data.get("id") if request and _valid_id(data.get("id")) else None
    if isinstance(data, list):
        return _error(types.INVALID_REQUEST, f"Invalid Request: batches (JSON arrays) are not supported; {_HINT}", None)
    try:
        message = types.jsonrpc_message_adapter.validate_json(text, by_name=False)
    except ValidationError:
        return _error(
            types.INVALID_REQUEST,
            'Invalid Request: not a JSON-RPC 2.0 message (an object with "jsonrpc": "2.0" and a "method", '
            'or a response with "result" or "error")',
            request_id,
        )
    if isinstance(message, types.JSONRPCNotification) and "id" in data:
        # The SDK would take it for a notification and never answer.
        return _error(types.INVALID_REQUEST, "Invalid Request: id must be a string or an integer", None)
    return text


class _CheckedLines:
    """What ``stdio_server`` reads in place of stdin: only lines its parser accepts."""

    def __init__(self, source: BinaryIO) -> None:
        self.source = source
        self.number = 0
        self._answers: Any = None
        self._ready = anyio.Event()

    def answer_with(self, write_stream: Any) -> None:
        self._answers = write_stream
        self._ready.set()

    def _read(self) -> tuple[bytes, bool]:
        """One line without its newline, and whether it was cut at ``MAX_MESSAGE_BYTES``; runs in a thread."""
        raw = self.source.readline(MAX_MESSAGE_BYTES + 1)
        if len(raw) <= MAX_MESSAGE_BYTES or raw.endswith(b"\n"):
            return raw, False
        rest = raw[-1:]
        while rest and not rest.endswith(b"\n"):  # drop the rest of the line, a megabyte at a time
            rest = self.source.readline(1024 * 1024)
        return raw[:_ID_SCAN_BYTES], True

    def __aiter__(self) -> _CheckedLines:
        return self

    async def __anext__(self) -> str:
        while True:
            raw, cut = await anyio.to_thread.run_sync(self._read, abandon_on_cancel=True)
            if not raw:
                raise StopAsyncIteration
            self.number += 1
            text = raw.decode("utf-8", errors="replace")  # as the SDK does: invalid UTF-8 becomes U+FFFD
            if cut:
                verdict: str | types.JSONRPCError | None = _error(
                    types.INVALID_REQUEST,
                    f"Invalid Request: message longer than {MAX_MESSAGE_BYTES:,} bytes; send less input "
                    "(diagnose keeps at most 1,000,000 characters)",
                    recover_id(text),
                )
            else:
                verdict = check_line(text)
            if isinstance(verdict, str):
                return verdict
            if verdict is not None:
                error = verdict.error
                log.warning("stdin line %d answered with %d: %s", self.number, error.code, error.message)
                await self._ready.wait()
                await self._answers.send(SessionMessage(verdict))


@contextlib.contextmanager
def _claimed_stdin() -> Iterator[BinaryIO]:
    """Serve stdin from a private duplicate and point fd 0 at the null device meanwhile, as the
    SDK does when it reads stdin itself: a child process must not read the client's messages."""
    stdin = sys.stdin
    try:
        if stdin is None or stdin.fileno() != 0:
            raise OSError("stdin is not fd 0")
        private = os.dup(0)
        null = os.open(os.devnull, os.O_RDONLY)
    except (OSError, ValueError, AttributeError):
        yield sys.stdin.buffer
        return
    try:
        os.dup2(null, 0)
    finally:
        os.close(null)
    try:
        # Never closed: a reader thread abandoned at shutdown may still block on it.
        yield os.fdopen(private, "rb", closefd=False)
    finally:
        os.dup2(private, 0)


@contextlib.asynccontextmanager
async def hardened_stdio_server(
    stdin: BinaryIO | None = None, stdout: anyio.AsyncFile[str] | None = None
) -> AsyncIterator[tuple[Any, Any]]:
    """``mcp.server.stdio.stdio_server`` with checked input: same (read_stream, write_stream)."""
    with contextlib.nullcontext(stdin) if stdin is not None else _claimed_stdin() as source:
        lines = _CheckedLines(source)
        # ignored below: _CheckedLines is no AsyncFile, but stdio_server only iterates it (async for line in stdin)
        async with stdio_server(stdin=lines, stdout=stdout) as (read_stream, write_stream):  # type: ignore[arg-type]
            lines.answer_with(write_stream)
            yield read_stream, write_stream


async def serve(server: MCPServer) -> None:
    """What ``MCPServer.run("stdio")`` does (``run_stdio_async``), on the hardened transport."""
    lowlevel = server._lowlevel_server  # the SDK offers no public handle to run it on other streams
    async with hardened_stdio_server() as (read_stream, write_stream):
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())


def run(server: MCPServer) -> None:
    anyio.run(serve, server)
