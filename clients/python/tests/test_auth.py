"""With auth on (a config listing a token's SHA-256), the client sends its bearer token: no or an
unknown token is Unauthorized (401), a token without the permission Forbidden (403)."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path
from typing import Iterator

import pytest

import onceq
from conftest import Server


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    token = secrets.token_hex(32)
    data = tmp_path_factory.mktemp("onceq-auth")
    config = data / "onceq.toml"
    config.write_text(f'''[[tokens]]
name = "py"
sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"
produce = ["py-auth-*"]
consume = ["py-auth-*"]
admin = []
''')
    server = Server(data, ["--config", str(config)])
    yield server, token
    server.stop()


def test_tokens_and_permissions(auth_server: tuple) -> None:
    server, token = auth_server
    with onceq.Client(server.url) as anonymous:
        with pytest.raises(onceq.Unauthorized) as e:
            anonymous.enqueue("py-auth-a", 1)
        assert (e.value.status, e.value.code) == (401, "unauthorized")
        anonymous.health()  # /healthz needs no token
    with onceq.Client(server.url, token="0" * 64) as wrong:
        with pytest.raises(onceq.Unauthorized):
            wrong.lease("py-auth-a")
    with onceq.Client(server.url, token=token) as client:
        assert not client.enqueue("py-auth-a", 1).duplicate
        [job] = client.lease("py-auth-a")
        client.ack(job.id, job.lease_token)
        with pytest.raises(onceq.Forbidden) as e:
            client.enqueue("billing", 1)
        assert e.value.status == 403
        with pytest.raises(onceq.Forbidden):
            client.queue_put("py-auth-a", max_attempts=2)  # admin is not granted
