"""Device ingestion over mutual TLS against a real ``fleetwarden serve`` (uvicorn) on a spare port,
with client certificates issued by ``fleetwarden ca`` and a server certificate made by openssl."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tests.conftest import IN_CI

T0 = 1_780_000_000.0
CLI = [sys.executable, "-m", "fleetwarden"]


def _cli(env: dict, *args: str) -> str:
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _spare_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl_cert(folder: Path, name: str, san: str) -> tuple[Path, Path]:
    crt, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(crt), "-days", "2", "-subj", f"/CN={name}", "-addext", f"subjectAltName={san}"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return crt, key


def _wait(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("serve did not start listening")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module (each CLI call starts a Python: seconds on a loaded machine)."""
    if shutil.which("openssl") is None:
        if IN_CI:
            pytest.fail("openssl is required in CI")
        pytest.skip("openssl not installed")
    tmp_path = tmp_path_factory.mktemp("mtls")
    env = {**os.environ, "FLEETWARDEN_HOME": str(tmp_path / "home")}
    env.pop("FLEETWARDEN_DB", None)
    db = str(tmp_path / "api.db")
    certs = tmp_path / "certs"
    _cli(env, "ca", "init", "--db", db)
    _cli(env, "ca", "export", "--out", str(tmp_path / "ca.crt"))
    for dev in ("cam-7", "cam-8"):
        _cli(env, "ca", "issue", dev, "--out-dir", str(certs), "--db", db)
    _cli(env, "ca", "revoke", "cam-8", "--db", db)
    token = _cli(env, "users", "add", "gw", "--role", "service", "--db", db).strip().splitlines()[-1].strip()
    viewer = _cli(env, "users", "add", "eve", "--role", "viewer", "--db", db).strip().splitlines()[-1].strip()
    srv_crt, srv_key = _openssl_cert(tmp_path, "server", "IP:127.0.0.1")
    port = _spare_port()
    proc = subprocess.Popen(
        [*CLI, "serve", "--port", str(port), "--db", db, "--tls-cert", str(srv_crt), "--tls-key", str(srv_key),
         "--client-ca", str(tmp_path / "ca.crt")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        _wait(port, proc)
        yield {"url": f"https://127.0.0.1:{port}", "verify": str(srv_crt), "certs": certs, "token": token,
               "viewer": viewer, "tmp": tmp_path, "proc": proc}  # fmt: skip
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _events(device: str | None, n: int = 3) -> dict:
    rows = [{"kind": "telemetry", "ts": T0 + i, "metric": "temperature", "value": 21.0} for i in range(n)]
    if device:
        for r in rows:
            r["device_id"] = device
    return {"events": rows}


def _verify(srv: dict, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=srv["verify"])
    if cert:
        ctx.load_cert_chain(*cert)
    return ctx


def _device_client(srv: dict, device: str) -> httpx.Client:
    c = srv["certs"]
    return httpx.Client(base_url=srv["url"], verify=_verify(srv, (str(c / f"{device}.crt"), str(c / f"{device}.key"))))


def test_device_certificate_authenticates_its_own_events_only(server):
    with _device_client(server, "cam-7") as client:
        r = client.post("/api/v1/events", json=_events(None))
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == 3
        r = client.post("/api/v1/events", json=_events("cam-7"))
        assert r.status_code == 200
        r = client.post("/api/v1/events", json=_events("cam-9"))
        assert r.status_code == 400 and "another device" in r.json()["detail"]
        # a device certificate is not an operator credential
        assert client.get("/api/v1/devices").status_code == 401


def test_revoked_certificate_is_refused(server):
    with _device_client(server, "cam-8") as client:
        r = client.post("/api/v1/events", json=_events("cam-8"))
        assert r.status_code == 401 and "revoked" in r.json()["detail"]


def test_certificate_of_another_ca_fails_the_handshake(server):
    crt, key = _openssl_cert(server["tmp"], "rogue", "DNS:cam-7")
    client = httpx.Client(base_url=server["url"], verify=_verify(server, (str(crt), str(key))))
    with client, pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        client.post("/api/v1/events", json=_events("cam-7"))


def test_tokens_still_work_over_tls_without_a_client_certificate(server):
    with httpx.Client(base_url=server["url"], verify=_verify(server)) as client:
        assert client.post("/api/v1/events", json=_events("cam-7")).status_code == 401
        auth = {"Authorization": f"Bearer {server['token']}"}
        r = client.post("/api/v1/events", json=_events("cam-7"), headers=auth)
        assert r.status_code == 200 and r.json()["accepted"] == 3
        viewer = {"Authorization": f"Bearer {server['viewer']}"}
        assert client.post("/api/v1/events", json=_events("cam-7"), headers=viewer).status_code == 403
        assert client.get("/api/v1/devices", headers=viewer).status_code == 200
    server["proc"].terminate()
    _out, err = server["proc"].communicate(timeout=15)
    assert server["token"] not in err and server["viewer"] not in err  # the access log names no token
