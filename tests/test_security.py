"""Security: JSON only unless opted in, size limits, Redis passwords and TLS, no secrets in the repo."""

from __future__ import annotations

import importlib
import re
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
import redis
from celery import Celery

from celery_batching import ConfigurationError, MalformedMessage, SampleTooLarge, batched, submit_many
from tests.fault_tools import load_app
from tests.servers import ROOT, RedisServer, Worker

APP = "tests.apps.faulty"
PICKLE = "application/x-python-serialize"


@pytest.fixture
def faulty(app_module_env):
    return importlib.import_module(APP)


# -- serialization ----------------------------------------------------------------


def test_pickle_is_refused_by_default(faulty, start_worker):
    # Given a worker with the default accept_content (JSON only)
    start_worker(APP)
    # When a client sends a pickled task
    result = faulty.work.apply_async((3,), serializer="pickle")
    # Then it fails, unrun, with an error that names the content type and the setting
    with pytest.raises(MalformedMessage, match=rf"content type '{PICKLE}' is refused.*\(accept_content\)"):
        result.get(timeout=10)
    # And JSON tasks still run
    assert faulty.work.delay(3).get(timeout=10) == 6


def test_pickle_runs_when_accept_content_enables_it(faulty, start_worker):
    # (Celery itself refuses pickle in a worker running as root unless C_FORCE_ROOT is set.)
    start_worker(APP, env={"CB_ACCEPT_CONTENT": "json,pickle", "C_FORCE_ROOT": "1"})
    assert faulty.work.apply_async((3,), serializer="pickle").get(timeout=10) == 6


# -- input size ---------------------------------------------------------------------


def test_samples_over_max_sample_bytes_fail_alone(faulty, start_worker):
    # Given a worker for a task that accepts encoded samples up to 1 KiB
    start_worker(APP)
    # When a small and a big sample are sent
    small, big = faulty.work.delay("s" * 100), faulty.work.delay("b" * 2000)
    # Then the small one runs, and the big one fails without reaching the model, naming the limit
    assert small.get(timeout=10) == "s" * 200
    with pytest.raises(SampleTooLarge, match=r"faulty.work: sample of \d+ bytes exceeds max_sample_bytes=1024"):
        big.get(timeout=10)


def _identity(batch: list) -> list:
    return batch


@pytest.mark.parametrize("limit", [0, -1, 1.5, "1k"])
def test_max_sample_bytes_must_be_a_positive_int(limit):
    app = Celery("limits", set_as_current=False)
    with pytest.raises(ConfigurationError, match="max_sample_bytes must be a positive int or None"):
        batched(app, max_sample_bytes=limit)(_identity)


def test_max_sample_bytes_none_lifts_the_limit():
    app = Celery("limits", set_as_current=False)
    task = batched(app, name="unlimited", max_sample_bytes=None)(_identity)
    assert task.max_sample_bytes is None


# -- Redis password ---------------------------------------------------------------------


@pytest.fixture
def password_redis():
    server = RedisServer(password=secrets.token_urlsafe(16)).start()
    yield server
    server.cleanup()


def test_round_trip_through_a_password_protected_redis(password_redis):
    # Given a Redis that requires a password, and broker and backend URLs that carry it
    assert password_redis.password and password_redis.password in password_redis.url(0)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=password_redis.port).ping()
    app = load_app(APP, password_redis.url(0))
    worker = Worker(APP, password_redis.url(0))
    try:
        # When a worker serves a task sent by a client
        worker.start()
        # Then the round trip works
        assert app.work.delay(21).get(timeout=10) == 42
        # And the worker never writes the password to its log
        assert password_redis.password not in worker.log()
    finally:
        worker.stop()


# -- TLS (rediss://) ------------------------------------------------------------------------


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (made at test time: no key is ever committed)."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class TlsRedisServer(RedisServer):
    """A private redis-server that speaks TLS only (its plain port is off)."""

    def __init__(self, cert: Path, key: Path) -> None:
        super().__init__()
        self.ca = cert
        self.args[self.args.index("--port") + 1] = "0"
        self.args += [
            "--tls-port",
            str(self.port),
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(cert),
            "--tls-auth-clients",
            "no",
        ]

    def url(self, db: int = 0, ca: Path | None = None) -> str:
        return f"rediss://127.0.0.1:{self.port}/{db}?ssl_cert_reqs=required&ssl_ca_certs={ca or self.ca}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, ssl=True, ssl_ca_certs=str(self.ca))


@pytest.fixture
def tls_redis(tmp_path):
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make a throwaway certificate (apt-get install openssl)")
    cert, key = _self_signed(tmp_path, "server")
    server = TlsRedisServer(cert, key).start()
    yield server
    server.cleanup()


def test_round_trip_over_tls(tls_redis):
    # Given a Redis reachable over TLS only, and rediss:// URLs that require a verified certificate
    broker, backend = tls_redis.url(0), tls_redis.url(1)
    app = load_app(APP, broker, backend)
    worker = Worker(APP, broker, env={"CB_TEST_BACKEND": backend})
    try:
        # When a worker serves tasks sent one by one and many at once (our own claim/ack path and
        # submit_many's LPUSH both run on kombu's channel client, so kombu's SSL options apply)
        worker.start()
        # Then the round trips work
        assert app.work.delay(21).get(timeout=10) == 42
        assert [r.get(timeout=10) for r in submit_many(app.work, [1, 2])] == [2, 4]
    finally:
        worker.stop()


def test_tls_certificate_is_verified(tls_redis, tmp_path):
    # Given a client that trusts another certificate authority than the one that signed the server's
    other_ca, _ = _self_signed(tmp_path, "other")
    app = load_app(APP, tls_redis.url(0, ca=other_ca), tls_redis.url(1, ca=other_ca))
    # When it connects to the broker, Then the handshake fails on verification
    with pytest.raises(Exception, match="certificate verify failed"):
        app.app.connection_for_write().default_channel  # noqa: B018 - the property connects


# -- secrets -------------------------------------------------------------------------------

# Credentials written into a URL, unless they are placeholders (${VAR}, {var}, <var>, ** masks).
_URL_CREDENTIALS = re.compile(r"\b(?:rediss?|amqps?|postgres(?:ql)?|mysql|mongodb)://[^\s/@'\"]*:([^\s@'\"/]+)@")
_PLACEHOLDER = re.compile(r"^(\$\{?|\{|<|\*+$)")
_SECRET_PATTERNS = {
    "private key": re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"),
    "AWS access key": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
}
_SECRET_FILES = re.compile(r"(^|/)(\.env|id_rsa|id_ed25519)$|\.(pem|key|p12|pfx)$")


def _tracked_files() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing tracked to scan")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    return [ROOT / name for name in listed.decode().split("\0") if name]


def test_no_secrets_in_the_repository():
    found = []
    for path in _tracked_files():
        name = path.relative_to(ROOT).as_posix()
        if _SECRET_FILES.search(name):
            found.append(f"{name}: a key or environment file is tracked")
        if not path.is_file():
            continue
        text = path.read_text(errors="ignore")
        found += [f"{name}: {what}" for what, pattern in _SECRET_PATTERNS.items() if pattern.search(text)]
        found += [
            f"{name}: password in a URL"
            for match in _URL_CREDENTIALS.finditer(text)
            if not _PLACEHOLDER.match(match.group(1))
        ]
    assert found == []


def test_the_secret_scan_sees_what_it_looks_for():
    # (the samples are split in two so that this file does not trip the scan itself)
    assert _SECRET_PATTERNS["private key"].search("-----BEGIN RSA " + "PRIVATE KEY-----")
    assert _URL_CREDENTIALS.search("redis://:hunter2" + "@redis:6379/0").group(1) == "hunter2"
    assert _PLACEHOLDER.match(_URL_CREDENTIALS.search("redis://:${REDIS_PASSWORD}@redis/0").group(1))
    assert _PLACEHOLDER.match(_URL_CREDENTIALS.search("redis://:**@127.0.0.1:6379/0").group(1))
    assert _SECRET_FILES.search("deploy/server.key") and not _SECRET_FILES.search("keys.py")
