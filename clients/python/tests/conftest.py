"""Starts a real `onceq serve` (embedded store in a temporary directory, a free loopback port)
from the repository's build, named by ONCEQ_BIN, for the whole test session."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator, List

import httpx
import pytest

import onceq

REPO = Path(__file__).resolve().parents[3]


def onceq_bin() -> str:
    path = os.environ.get("ONCEQ_BIN")
    if not path:
        pytest.fail("ONCEQ_BIN is not set: point it at a built onceq binary (cargo build -p onceq-cli gives "
                    "target/debug/onceq), or run these tests through cargo test -p onceq-cli --test python_client")
    if not os.access(path, os.X_OK):
        pytest.fail(f"ONCEQ_BIN={path} is not an executable file")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running `onceq serve`; `stop` sends SIGTERM and waits."""

    def __init__(self, data_dir: Path, extra: List[str] = ()) -> None:  # type: ignore[assignment]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir / "serve.log"
        self.process = subprocess.Popen(
            [onceq_bin(), "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(data_dir / "data"), *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"))
        deadline = time.monotonic() + 20
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"onceq serve exited with {self.process.returncode}: {self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"onceq serve was not ready within 20 s: {self.log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("onceq"))
    yield s
    s.stop()


@pytest.fixture
def client(server: Server) -> Iterator[onceq.Client]:
    with onceq.Client(server.url) as c:
        yield c


@pytest.fixture
def queue(request: pytest.FixtureRequest) -> str:
    """A fresh queue name for the test."""
    name = request.node.name.replace("[", "-").replace("]", "").replace("/", "-")
    return f"py-{name[:80]}-{secrets.token_hex(4)}"
