"""Starts a real `onceq serve` (embedded store in a temporary directory, a loopback port it picks)
from the repository's build, named by ONCEQ_BIN, for the whole test session."""

from __future__ import annotations

import os
import secrets
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator, List, Sequence

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


class Server:
    """A running `onceq serve` on a port it picked itself; `stop` sends SIGTERM and waits."""

    LISTENING = "onceq listening on http://"

    def __init__(self, data_dir: Path, extra: Sequence[str] = ()) -> None:
        self.log = data_dir / "serve.log"
        self.process = subprocess.Popen(
            [onceq_bin(), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir / "data"), *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=open(self.log, "wb"), text=True)
        address: List[str] = []

        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                if line.startswith(self.LISTENING) and not address:
                    address.append(line[len(self.LISTENING):].split()[0])
        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + 30
        while not address:
            if self.process.poll() is not None:
                raise RuntimeError(f"onceq serve exited with {self.process.returncode}: {self.log.read_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"onceq serve did not listen within 30 s: {self.log.read_text()}")
            time.sleep(0.02)
        self.url = f"http://{address[0]}"

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
