"""A real HTTP file server on 127.0.0.1 for the remote-data tests, with faults on request: latency per
request, a connection dropped mid-file for the first N GETs of a path, paths that 404.

It runs in its own process (`python tests/shard_server.py CONFIG`): a server thread inside the test
process would be inherited, listening socket and all, by forked DataLoader workers, which then accept
connections they never answer. Each request is appended to a log file as `time path status` on arrival
(status -1: dropped halfway)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ShardServer:
    def __init__(self, root: Path, latency: float = 0.0, drops: dict[str, int] | None = None,
                 missing: tuple[str, ...] = (), *, log_dir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_dir) / f"requests-{self.port}.log"
        self.config = {"root": str(root), "port": self.port, "latency": latency, "drops": drops or {},
                       "missing": list(missing), "log": str(self.log_path)}

    @property
    def log(self) -> list[tuple[float, str, int]]:
        if not self.log_path.exists():
            return []
        rows = [line.split() for line in self.log_path.read_text().splitlines() if line.strip()]
        return [(float(t), path, int(status)) for t, path, status in rows]

    def gets(self, name: str) -> list[int]:
        return [status for _, path, status in self.log if path == "/" + name]

    def __enter__(self) -> ShardServer:
        self.proc = subprocess.Popen([sys.executable, __file__, json.dumps(self.config)])
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.proc.kill()
        raise RuntimeError("the test HTTP server did not start")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def serve(config: dict) -> None:
    root, log_path = Path(config["root"]), Path(config["log"])
    drops, missing = dict(config["drops"]), set(config["missing"])
    lock = threading.Lock()

    def note(path: str, status: int) -> None:
        with lock, open(log_path, "a") as f:
            f.write(f"{time.monotonic():.6f} {path} {status}\n")

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            with lock:
                drop = drops.get(path, 0) > 0
                if drop:
                    drops[path] -= 1
            status = 404 if path in missing else -1 if drop else 200
            note(path, status)
            if config["latency"]:
                time.sleep(config["latency"])
            if status == 404:
                self.send_error(404)
            elif drop:
                data = (root / path.lstrip("/")).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)  # the server goes away mid-shard
                self.close_connection = True
            else:
                super().do_GET()

    httpd = ThreadingHTTPServer(("127.0.0.1", config["port"]), Handler)
    httpd.daemon_threads = True
    httpd.serve_forever()


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]))
