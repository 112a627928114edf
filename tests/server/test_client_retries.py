"""The tests' boto3 clients send each request once (:func:`tests.server.conftest.send_once`).

The server tests count failed requests and the crash tests tell a request the server never
saw from one cut off under it; both hold only if botocore does not send a request again by
itself. (``retries={"max_attempts": 1}`` does: it counts retries, so a request is sent
twice when the first attempt breaks or is answered with a 5xx.)

A loopback listener that counts the requests it receives stands in for the server: it
breaks every connection after reading its request, or answers 500.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

import boto3
import pytest
from botocore.exceptions import ClientError, ConnectionClosedError

from tests.server.conftest import REGION, send_once

_500 = (b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/x-amz-json-1.1\r\n"
        b"Content-Length: 51\r\n\r\n"
        b'{"__type":"KMSInternalException","message":"boom!"}')


@contextlib.contextmanager
def listener(answer: bytes | None) -> Iterator[tuple[int, list[int]]]:
    """(port, [requests received]); each connection's request is read, then answered with
    ``answer`` or, if None, reset (as a killed server's socket)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    seen = [0]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if not data:
                    continue
                seen[0] += 1
                if answer is None:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))  # close with a reset
                else:
                    conn.sendall(answer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1], seen
    finally:
        stop.set()
        t.join(timeout=5)
        srv.close()


def _client(port: int) -> object:
    return boto3.client("kms", endpoint_url=f"http://127.0.0.1:{port}", region_name=REGION,
                        aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="x" * 40,
                        config=send_once(read_timeout=5, connect_timeout=2))


@pytest.mark.parametrize("answer", [None, _500], ids=["connection-reset", "http-500"])
def test_a_failed_request_is_not_sent_again(answer: bytes | None) -> None:
    with listener(answer) as (port, seen):
        client = _client(port)
        with pytest.raises((ConnectionClosedError, ClientError)) as info:
            client.list_keys()  # type: ignore[attr-defined]
        if answer is not None:
            assert isinstance(info.value, ClientError)
            assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
        else:
            assert isinstance(info.value, ConnectionClosedError)
        assert seen[0] == 1, f"the request was received {seen[0]} times"
