"""``fleetwarden serve`` with the live pipeline in the same process: a real server (subprocess) on a
spare port subscribed to the real Mosquitto (or consuming the real NATS JetStream), a simulated
fleet's events published to it, and the incident read back through the REST API; the console
served by the same app; a broken source reported without taking the API down."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from fleetwarden.app.live import LiveError, LivePipeline

CLI = [sys.executable, "-m", "fleetwarden"]
ATTACK = {"scan", "c2-beacon"}
CTRL_C_EXIT = (0, 130)  # uvicorn re-raises the SIGINT it handled once shut down: 130 as for Ctrl-C


def _spare_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path: Path) -> dict:
    env = {**os.environ, "FLEETWARDEN_HOME": str(tmp_path / "home")}
    env.pop("FLEETWARDEN_DB", None)
    return env


def _viewer_token(env: dict, db: str) -> str:
    done = subprocess.run(
        [*CLI, "users", "add", "eve", "--role", "viewer", "--db", db], capture_output=True, text=True, timeout=120,
        env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1].strip()


class Server:
    """``fleetwarden serve ARGS`` as a subprocess, its standard error in a file."""

    def __init__(self, tmp_path: Path, env: dict, db: str, *args: str) -> None:
        self.port = _spare_port()
        self.log = tmp_path / "serve.stderr"
        self._err = self.log.open("w")
        self.proc = subprocess.Popen(
            [*CLI, "serve", "--port", str(self.port), "--db", db, *args], env=env, stdout=subprocess.DEVNULL,
            stderr=self._err,
        )  # fmt: skip
        self.base = f"http://127.0.0.1:{self.port}"

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 90.0) -> None:
        """Until ``text`` is on standard error and the port listens."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc.poll() is None, f"serve exited: {self.stderr()}"
            if text in self.stderr() and _listening(self.port):
                return
            time.sleep(0.2)
        raise AssertionError(f"no {text!r} within {timeout} s: {self.stderr()}")

    def stop(self) -> int:
        """SIGINT (Ctrl-C) and the exit code; killed if it does not stop within 30 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"serve did not stop on SIGINT: {self.stderr()}") from None
        self._err.close()
        return self.proc.returncode


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _poll_incidents(server: Server, token: str, timeout: float = 120.0) -> list[dict]:
    """The incidents the API lists, once one of the attack's categories is among them."""
    headers = {"Authorization": f"Bearer {token}"}
    items: list[dict] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert server.proc.poll() is None, f"serve exited: {server.stderr()}"
        r = httpx.get(f"{server.base}/api/v1/incidents", params={"limit": 200}, headers=headers, timeout=10)
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        if ATTACK & {i["category"] for i in items}:
            return items
        time.sleep(0.5)
    raise AssertionError(f"no incident of {ATTACK} within {timeout} s: {items} {server.stderr()}")


def _console_login(server: Server) -> None:
    r = httpx.get(f"{server.base}/console/", timeout=10, follow_redirects=True)
    assert r.status_code == 200
    assert "text/html" in r.headers["content-type"]
    assert "token" in r.text.lower()  # the login form asks for an API token


def _mirai_fleet():
    from fleetwarden.simulate import simulate_fleet

    return simulate_fleet(devices=30, hours=2, seed=5, scenarios=["mirai-camera"])


@pytest.mark.mqtt
def test_serve_mqtt_records_live_incidents_and_serves_the_console(mqtt_broker, tmp_path):
    from fleetwarden.sources.mqtt import publish_batches

    env, db = _env(tmp_path), str(tmp_path / "live.db")
    token = _viewer_token(env, db)
    prefix = f"fwtest-{uuid.uuid4().hex[:8]}/events"  # a topic tree of our own on the shared broker
    url = f"mqtt://{mqtt_broker[0]}:{mqtt_broker[1]}"
    server = Server(tmp_path, env, db, "--mqtt", url, "--topic", f"{prefix}/#", "--record-every", "0.5")
    try:
        server.wait_for("live pipeline: subscribed")
        _console_login(server)
        before = httpx.get(
            f"{server.base}/api/v1/incidents", headers={"Authorization": f"Bearer {token}"}, timeout=10
        ).json()["items"]
        assert before == []
        fleet = _mirai_fleet()
        sent = publish_batches(fleet.iter_batches(seconds=120), url, prefix=prefix, per_message=50, rate=5000)
        assert sent == fleet.event_count()
        # found while the server runs: the pipeline records as it goes, not at shutdown
        items = _poll_incidents(server, token)
        assert all(0 <= i["risk"] <= 100 for i in items)
    finally:
        code = server.stop()
    log = server.stderr()
    assert code in CTRL_C_EXIT, log
    assert "Traceback" not in log and "live pipeline (" not in log, log  # no failed attempt


def test_serve_reports_an_unreachable_broker_and_keeps_serving(tmp_path):
    env, db = _env(tmp_path), str(tmp_path / "down.db")
    token = _viewer_token(env, db)
    server = Server(tmp_path, env, db, "--mqtt", f"mqtt://127.0.0.1:{_spare_port()}")
    try:
        server.wait_for("retrying")
        r = httpx.get(
            f"{server.base}/api/v1/incidents", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert r.status_code == 200 and r.json()["items"] == []
        assert httpx.get(f"{server.base}/api/v1/incidents", timeout=10).status_code == 401
        _console_login(server)
    finally:
        code = server.stop()
    log = server.stderr()
    assert code in CTRL_C_EXIT, log
    assert "live pipeline (mqtt mqtt://127.0.0.1" in log and "cannot connect" in log, log
    assert "Traceback" not in log, log


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "give one live source"),
        ({"mqtt": "mqtt://h", "bus": "nats://h"}, "give one live source"),
        ({"mqtt": "http://h"}, "bad MQTT URL"),
        ({"mqtt": "mqtt://h", "topic": "t" * 2000}, "--topic"),
        ({"mqtt": "mqtt://h", "tls_ca": "/nonexistent/ca.pem"}, "--mqtt-tls-ca"),
        ({"mqtt": "mqtt://h", "tls_cert": __file__}, "go together"),
        ({"mqtt": "mqtt://h", "record_every": 0}, "--record-every"),
        ({"bus": "mqtt://h"}, "bad bus URL"),
        ({"bus": "nats://h", "partitions": 0}, "--partitions"),
        ({"bus": "nats://h", "stream": "a b"}, "--stream"),
    ],
)
def test_bad_live_options_are_refused_before_serving(args, message):
    with pytest.raises(Exception, match=message) as caught:
        LivePipeline(None, **args)
    assert isinstance(caught.value, LiveError) or "URL" in str(caught.value)


def test_serve_with_bad_live_options_exits_2_without_serving(tmp_path):
    env = _env(tmp_path)
    done = subprocess.run(
        [*CLI, "serve", "--port", str(_spare_port()), "--db", str(tmp_path / "x.db"), "--mqtt", "mqtt://h",
         "--bus", "nats://h"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith("give one live source: --mqtt URL or --bus URL")


@pytest.mark.nats
def test_serve_bus_records_live_incidents(nats_url, tmp_path):
    import asyncio

    from fleetwarden.bus.jetstream import connect, publish_batches_nats

    env, db = _env(tmp_path), str(tmp_path / "bus.db")
    token = _viewer_token(env, db)
    tag = uuid.uuid4().hex[:8]
    stream, subjects = f"FWSERVE_{tag}", f"fwserve.{tag}.events"
    fleet = _mirai_fleet()
    sent = publish_batches_nats(fleet.iter_batches(seconds=60), nats_url, 2, per_message=50, stream=stream,
                                prefix=subjects)  # fmt: skip
    assert sent == fleet.event_count()
    server = Server(
        tmp_path, env, db, "--bus", nats_url, "--stream", stream, "--subjects", subjects, "--partitions", "2",
        "--record-every", "0.5",
    )  # fmt: skip
    try:
        server.wait_for("Live pipeline: bus")
        items = _poll_incidents(server, token)
        assert all(0 <= i["risk"] <= 100 for i in items)
    finally:
        code = server.stop()

        async def delete() -> None:
            nc = await connect(nats_url)
            await nc.jetstream().delete_stream(stream)
            await nc.close()

        asyncio.run(delete())
    log = server.stderr()
    assert code in CTRL_C_EXIT, log
    assert "Traceback" not in log and "live pipeline (" not in log, log
