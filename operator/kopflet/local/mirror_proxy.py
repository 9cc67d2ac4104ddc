"""A plain-HTTP forward proxy that reaches only the Debian mirror, for ``apt-get`` in image builds.

The build engine lives in a network namespace of its own whose only way out is the host, and the
host does not forward. Rather than turning on forwarding and NAT for the whole host, the build
steps get ``http_proxy`` pointing here: this proxy listens on the host end of the build
namespace's link and relays ``GET``/``HEAD`` requests for the allowed mirror hosts on port 80 —
nothing else. apt verifies every file against the signed Release file, so a plain-HTTP relay adds
no trust.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from loguru import logger

#: Headers that describe one hop, not the resource (RFC 9110, 7.6.1).
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_UPSTREAM_TIMEOUT = 60.0
_CHUNK = 64 * 1024


def _handler(allowed_hosts: frozenset[str]) -> type[BaseHTTPRequestHandler]:
    class MirrorRelay(BaseHTTPRequestHandler):
        # apt keeps its connection open and pipelines requests: speak HTTP/1.1 back.
        protocol_version = "HTTP/1.1"
        answered = False

        def do_GET(self) -> None:
            self._relay()

        def do_HEAD(self) -> None:
            self._relay()

        def _refuse(self, code: int, why: str) -> None:
            body = f"{why}\n".encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _relay(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            host = (url.hostname or "").lower()
            if url.scheme != "http" or host not in allowed_hosts or url.port not in (None, 80):
                self._refuse(403, f"this proxy only reaches http://{'|'.join(allowed_hosts)}")
                return
            target = urllib.parse.urlunsplit(("", "", url.path or "/", url.query, ""))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            upstream = http.client.HTTPConnection(host, 80, timeout=_UPSTREAM_TIMEOUT)
            self.answered = False
            try:
                upstream.request(self.command, target, headers=headers)
                response = upstream.getresponse()
                self._send_upstream(response)
            except OSError as error:
                logger.warning("mirror proxy: {} {}: {}", self.command, self.path, error)
                self.close_connection = True
                # Mid-body, the closed connection tells apt the file is short and it retries.
                if not self.answered:
                    self._refuse(502, f"upstream failed: {error}")
            finally:
                upstream.close()

        def _send_upstream(self, response: http.client.HTTPResponse) -> None:
            length = response.getheader("Content-Length")
            self.send_response(response.status, response.reason)
            self.answered = True
            for key, value in response.getheaders():
                if key.lower() not in _HOP_BY_HOP:
                    self.send_header(key, value)
            if length is None and self.command != "HEAD":
                # A body without a length ends with the connection.
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command == "HEAD":
                return
            while chunk := response.read(_CHUNK):
                self.wfile.write(chunk)

        def log_message(self, format: str, *args: object) -> None:
            # apt reports every file itself; only failures are worth a line here.
            pass

    return MirrorRelay


@contextmanager
def mirror_proxy(*, host: str, port: int, allowed_hosts: frozenset[str]) -> Iterator[str]:
    """Serve the proxy on ``host:port`` while the block runs; yields its ``http://`` URL."""
    server = ThreadingHTTPServer((host, port), _handler(allowed_hosts))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="mirror-proxy", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
