"""Send exact bytes to a server and read one HTTP/1.1 response: for requests a client library would fix up."""

from __future__ import annotations

import asyncio


async def read_response(reader: asyncio.StreamReader, wait: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Read one response: (status, lower-cased headers, body), the body by length or until close."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), wait)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), wait)
    else:
        body = await asyncio.wait_for(reader.read(), wait)
    return status, headers, body


async def raw_request(port: int, data: bytes, wait: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Write `data` as is; return (status, lower-cased headers, body), reading until close or length."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_response(reader, wait)
    finally:
        writer.close()
