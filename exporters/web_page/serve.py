"""Serve this folder on 127.0.0.1 with the headers that let onnxruntime-web use threads.

    python serve.py [--port 8000]

WebAssembly threads need SharedArrayBuffer, which browsers give only to a cross-origin isolated
page: one served with `Cross-Origin-Opener-Policy: same-origin` and
`Cross-Origin-Embedder-Policy: require-corp`. Any static server that sends those two headers (and
`application/wasm` for .wasm) does the same job. Standard library only.
"""

from __future__ import annotations

import argparse
import functools
import http.server
from pathlib import Path


class IsolatedHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript", ".wasm": "application/wasm", ".onnx": "application/octet-stream"}

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:  # one line per request is noise for a page of 6 files
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on (default: this machine only)")
    args = parser.parse_args()
    handler = functools.partial(IsolatedHandler, directory=str(Path(__file__).resolve().parent))
    with http.server.ThreadingHTTPServer((args.bind, args.port), handler) as server:
        print(f"http://{args.bind}:{server.server_address[1]}/", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
