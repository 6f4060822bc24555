"""HTTP/1.1 test server for the HTTP tracer: plain on one port, TLS on another (certificate given).

usage: httpechoserver.py PORT TLS_PORT CERT KEY

GET /bytes/N answers N bytes (/fail/N: the same with status 503); GET /chunked/N answers N bytes in chunks of 1000; POST /upload reads the
body (Content-Length) and answers with its length. Keep-alive, so clients may pipeline.
"""

from __future__ import annotations

import http.server
import ssl
import sys
import threading

from sentinel_ebpf._plainhttp import PlainHandler


class Handler(PlainHandler):
    def do_GET(self) -> None:
        kind, _, size = self.path.strip("/").partition("/")
        n = int(size) if size.isdigit() else 16
        body = bytes(i % 251 for i in range(n))
        if kind == "chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, n, 1000):
                part = body[i : i + 1000]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.reply({"bytes": 200, "fail": 503}.get(kind, 404), body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        got = 0
        while got < length:
            chunk = self.rfile.read(min(65536, length - got))
            if not chunk:
                break
            got += len(chunk)
        self.reply(201, f"{got}\n".encode())


def main() -> None:
    port, tls_port, cert, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    plain = http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler)
    secure = http.server.ThreadingHTTPServer(("0.0.0.0", tls_port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    secure.socket = ctx.wrap_socket(secure.socket, server_side=True)
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    secure.serve_forever()


if __name__ == "__main__":
    main()
