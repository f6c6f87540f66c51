"""connect() and server_info() against real redis-server processes: URLs, auth, TLS, Sentinel."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from janitor.config import RedisSettings, Secret
from janitor.connection import (
    SOCKET_CONNECT_TIMEOUT_S,
    SOCKET_TIMEOUT_S,
    connect,
    server_info,
)
from janitor.errors import EXIT_UNAVAILABLE, ConfigError, RedisUnavailable
from tests.servers import (
    RedisServer,
    ServerBinaryMissingError,
    default_server_binary,
    find_server_binaries,
    free_port,
)

PASSWORD = "s3cret-Pa55word"  # noqa: S105 - the throwaway test server's password


@pytest.fixture(scope="module")
def binary() -> Path:
    """The redis-server (or valkey-server) binary the suite uses."""
    try:
        return default_server_binary()
    except ServerBinaryMissingError as err:
        pytest.skip(str(err))


@pytest.fixture
def secured(binary: Path, tmp_path: Path) -> Iterator[RedisServer]:
    """A server on a free port that requires PASSWORD."""
    server = RedisServer(binary=binary, workdir=tmp_path / "secured", password=PASSWORD)
    try:
        yield server.start()
    finally:
        server.stop()


def direct(server: RedisServer, db: int = 0) -> redis.Redis:
    """Return a plain client to ``server``, built without janitor.connection."""
    return redis.Redis(
        host="127.0.0.1", port=server.port, db=db, password=server.password
    )


def full_text(err: BaseException) -> str:
    """Return everything a traceback of ``err`` would print, causes included."""
    return "".join(traceback.format_exception(err))


def client_names(server: RedisServer, db: int = 0) -> list[str]:
    """Return the names of the clients connected to ``server``, as CLIENT LIST shows them."""
    with direct(server, db) as admin:
        return [str(c["name"]) for c in admin.client_list()]


def test_plain_url_gives_a_named_bytes_client(redis_server: RedisServer) -> None:
    """A redis:// URL connects, PINGs, answers in bytes and carries the client name."""
    with connect(RedisSettings(url=redis_server.url)) as client:
        assert client.ping() is True
        assert client.echo("hello") == b"hello"
        assert client.get_encoder().decode_responses is False
        name = client.client_getname()
        assert (name.decode() if isinstance(name, bytes) else name) == "rq-janitor"
        assert "rq-janitor" in client_names(redis_server)


def test_client_name_is_configurable(redis_server: RedisServer) -> None:
    """The client_name argument is what CLIENT LIST shows for the connection."""
    with connect(RedisSettings(url=redis_server.url), client_name="janitor-test-7"):
        assert "janitor-test-7" in client_names(redis_server)


def test_client_uses_timeouts_and_bounded_retry(redis_server: RedisServer) -> None:
    """Every connection gets socket timeouts, a health check and a finite retry."""
    with connect(RedisSettings(url=redis_server.url)) as client:
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] > 0
        assert kwargs["socket_connect_timeout"] > 0
        assert kwargs["health_check_interval"] > 0
        retry = client.get_retry()
        assert retry is not None
        assert 0 < retry.get_retries() < 10


def test_password_from_settings(secured: RedisServer) -> None:
    """A password given as a Secret in the settings authenticates against requirepass."""
    settings = RedisSettings(
        url=f"redis://127.0.0.1:{secured.port}/0", password=Secret(PASSWORD)
    )
    with connect(settings) as client:
        assert client.ping() is True


def test_settings_password_overrides_the_url_password(secured: RedisServer) -> None:
    """The settings' password wins over a (wrong) password in the URL."""
    url = f"redis://:not-this-one@127.0.0.1:{secured.port}/0"
    with connect(RedisSettings(url=url, password=Secret(PASSWORD))) as client:
        assert client.ping() is True


def test_url_password_is_used_without_a_settings_password(secured: RedisServer) -> None:
    """A password in the URL alone authenticates."""
    with connect(RedisSettings(url=secured.url)) as client:
        assert client.ping() is True


def test_wrong_password_says_authentication_failed_and_hides_it(
    secured: RedisServer,
) -> None:
    """A wrong password raises RedisUnavailable naming the auth failure, never the password."""
    wrong = "wrong-hunter2-pw"
    settings = RedisSettings(
        url=f"redis://127.0.0.1:{secured.port}/0", password=Secret(wrong)
    )
    started = time.monotonic()
    with pytest.raises(RedisUnavailable) as caught:
        connect(settings)
    assert time.monotonic() - started < 1.0, "a refused password is not retried"
    message = str(caught.value)
    assert "authentication failed" in message
    assert message.startswith(
        f"cannot reach Redis at redis://:***@127.0.0.1:{secured.port}/0: "
    )
    assert wrong not in full_text(caught.value)
    assert PASSWORD not in full_text(caught.value)


def test_missing_password_says_authentication_failed(secured: RedisServer) -> None:
    """No password against requirepass raises RedisUnavailable that says how to give one."""
    with pytest.raises(RedisUnavailable, match="authentication failed") as caught:
        connect(RedisSettings(url=f"redis://127.0.0.1:{secured.port}/0"))
    assert "password_file" in str(caught.value)


def test_unix_socket_url(binary: Path, tmp_path: Path) -> None:
    """A unix:// URL connects through the socket and honours ?db=N."""
    sock = tmp_path / "redis.sock"
    server = RedisServer(binary=binary, workdir=tmp_path / "unix", unixsocket=sock)
    try:
        server.start()
        with connect(RedisSettings(url=f"unix://{sock}?db=3")) as client:
            client.set(b"via-socket", b"1")
            assert client.connection_pool.connection_kwargs["path"] == str(sock)
        with direct(server, 3) as plain:
            assert plain.get(b"via-socket") == b"1"
    finally:
        server.stop()


def test_unreachable_port_fails_fast_with_redacted_url() -> None:
    """Nothing listening: RedisUnavailable (exit 69) within seconds, URL redacted, no password."""
    port = free_port()
    settings = RedisSettings(
        url=f"redis://someuser:url-pass-123@127.0.0.1:{port}/0",
        password=Secret(PASSWORD),
    )
    started = time.monotonic()
    with pytest.raises(RedisUnavailable) as caught:
        connect(settings)
    assert time.monotonic() - started < 10.0
    message = str(caught.value)
    assert message.startswith(
        f"cannot reach Redis at redis://someuser:***@127.0.0.1:{port}/0: "
    )
    assert "url-pass-123" not in full_text(caught.value)
    assert PASSWORD not in full_text(caught.value)
    assert caught.value.exit_code == EXIT_UNAVAILABLE


def test_hung_server_fails_within_the_socket_timeout(
    binary: Path, tmp_path: Path
) -> None:
    """A server that accepts but never answers fails after one socket timeout, not retries."""
    server = RedisServer(binary=binary, workdir=tmp_path / "hung").start()
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(RedisUnavailable, match=f"127.0.0.1:{server.port}"):
            connect(RedisSettings(url=f"redis://127.0.0.1:{server.port}/0"))
        assert time.monotonic() - started < SOCKET_TIMEOUT_S + SOCKET_CONNECT_TIMEOUT_S
    finally:
        server.process.send_signal(signal.SIGCONT)
        server.stop()


def test_redacted_url_marks_a_password_from_settings() -> None:
    """A password that comes only from the settings shows as *** in the message."""
    port = free_port()
    settings = RedisSettings(
        url=f"redis://127.0.0.1:{port}/0", password=Secret(PASSWORD)
    )
    with pytest.raises(
        RedisUnavailable, match=rf"redis://:\*\*\*@127\.0\.0\.1:{port}/0: "
    ):
        connect(settings)


def test_malformed_url_is_a_config_error() -> None:
    """A URL with an unknown scheme is a ConfigError that names [redis] url."""
    with pytest.raises(ConfigError, match=r"\[redis\] url"):
        connect(RedisSettings(url="http://127.0.0.1:1/0"))


def test_unknown_url_option_is_a_config_error() -> None:
    """An option in the URL's query that redis-py does not know is a ConfigError."""
    with pytest.raises(ConfigError, match="no_such_option"):
        connect(
            RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0?no_such_option=1")
        )


def test_ssl_option_without_rediss_is_a_config_error() -> None:
    """ssl_ca_certs with a redis:// URL is a ConfigError rather than a silent plain connection."""
    settings = RedisSettings(
        url=f"redis://127.0.0.1:{free_port()}/0", ssl_ca_certs="/nonexistent/ca.pem"
    )
    with pytest.raises(ConfigError, match=r"\[redis\] ssl_ca_certs .* rediss://"):
        connect(settings)


def test_sentinel_without_master_name_is_a_config_error() -> None:
    """Sentinels without sentinel_master are a ConfigError naming the missing key."""
    settings = RedisSettings(
        url=f"redis://127.0.0.1:{free_port()}/0",
        sentinels=(("127.0.0.1", free_port()),),
    )
    with pytest.raises(ConfigError, match=r"\[redis\] sentinel_master"):
        connect(settings)


def test_server_info_reports_the_version(redis_server: RedisServer) -> None:
    """server_info returns the server's version and the documented summary keys."""
    with connect(RedisSettings(url=redis_server.url)) as client:
        info = server_info(client)
    assert info["version"] == redis_server.version()
    assert info["flavour"] in {"redis", "valkey"}
    assert info["redis_mode"] == "standalone"
    assert set(info) == {
        "flavour",
        "version",
        "redis_mode",
        "maxmemory",
        "maxmemory_policy",
        "used_memory_human",
        "connected_clients",
        "dbsize",
    }
    assert info["dbsize"].isdigit()
    assert info["maxmemory_policy"] != "unknown"


# --- TLS -------------------------------------------------------------------------------


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """Create a throwaway CA and a server certificate for 127.0.0.1 with the openssl CLI.

    Returns:
        The CA certificate, the server certificate and the server key.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl CLI is missing, so no test certificates can be made")
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = (
        directory / "server.key",
        directory / "server.csr",
        directory / "server.crt",
    )
    ext = directory / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    commands: list[list[str | Path]] = [
        [openssl, "req", "-x509", "-new", "-nodes", "-newkey", "rsa:2048", "-days", "1",
         "-keyout", ca_key, "-out", ca_crt, "-subj", "/CN=rq-janitor test CA"],
        [openssl, "req", "-new", "-nodes", "-newkey", "rsa:2048",
         "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        [openssl, "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
         "-CAcreateserial", "-days", "1", "-out", crt, "-extfile", ext],
    ]  # fmt: skip
    for command in commands:
        subprocess.run(command, check=True, capture_output=True, timeout=60)
    return ca_crt, crt, key


def missing_tls_support(binary: Path, tls_args: list[str]) -> str | None:
    """Return why ``binary`` cannot serve TLS, or None when TLS is not the problem."""
    try:
        run = subprocess.run(
            [str(binary), "--port", "0", "--save", "", *tls_args],
            check=False,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except subprocess.TimeoutExpired:
        return None  # it came up (and was killed): TLS works, something else failed
    output = run.stdout + run.stderr
    markers = ("Bad directive", "TLS support", "connection type tls")
    found = any(marker in output for marker in markers)
    return output.strip().splitlines()[-1] if found else None


@pytest.fixture
def tls_server(binary: Path, tmp_path: Path) -> Iterator[tuple[RedisServer, int, Path]]:
    """A server with a TLS port next to its plain one; yields it, the TLS port and the CA file."""
    tls_binary = find_server_binaries().get("system", binary)
    ca_crt, crt, key = make_certificates(tmp_path)
    tls_port = free_port()
    tls_args = [
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(crt),
        "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(ca_crt),
        "--tls-auth-clients", "no",
    ]  # fmt: skip
    server = RedisServer(
        binary=tls_binary, workdir=tmp_path / "tls", extra_args=tls_args
    )
    try:
        try:
            server.start()
        except (RuntimeError, OSError):
            server.stop()
            reason = missing_tls_support(tls_binary, tls_args)
            if reason is None:
                raise
            pytest.skip(f"{tls_binary} has no TLS support: {reason}")
        yield server, tls_port, ca_crt
    finally:
        server.stop()


def test_rediss_url_with_ca_from_settings(
    tls_server: tuple[RedisServer, int, Path],
) -> None:
    """rediss:// with ssl_ca_certs from the settings talks TLS to the TLS port."""
    _, tls_port, ca_crt = tls_server
    settings = RedisSettings(
        url=f"rediss://127.0.0.1:{tls_port}/0", ssl_ca_certs=str(ca_crt)
    )
    with connect(settings) as client:
        assert client.ping() is True
        assert issubclass(client.connection_pool.connection_class, redis.SSLConnection)


def test_rediss_url_with_ca_in_query(tls_server: tuple[RedisServer, int, Path]) -> None:
    """rediss:// takes ssl_ca_certs from the URL's own query as well."""
    _, tls_port, ca_crt = tls_server
    with connect(
        RedisSettings(url=f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={ca_crt}")
    ) as client:
        assert client.ping() is True


def test_rediss_with_an_untrusted_certificate_is_unavailable(
    tls_server: tuple[RedisServer, int, Path], tmp_path: Path
) -> None:
    """A server certificate the given CA did not sign raises RedisUnavailable, not ssl errors."""
    _, tls_port, _ = tls_server
    other = tmp_path / "other"
    other.mkdir()
    other_ca, _, _ = make_certificates(other)
    settings = RedisSettings(
        url=f"rediss://127.0.0.1:{tls_port}/0", ssl_ca_certs=str(other_ca)
    )
    with pytest.raises(
        RedisUnavailable,
        match=f"cannot reach Redis at rediss://127.0.0.1:{tls_port}/0: ",
    ):
        connect(settings)


def test_plain_url_against_the_tls_port_is_unavailable(
    tls_server: tuple[RedisServer, int, Path],
) -> None:
    """redis:// (no TLS) against the TLS port fails: the TLS tests really used TLS."""
    _, tls_port, _ = tls_server
    with pytest.raises(RedisUnavailable):
        connect(RedisSettings(url=f"redis://127.0.0.1:{tls_port}/0"))


# --- Sentinel ----------------------------------------------------------------------------


@pytest.fixture
def sentinel(secured: RedisServer, binary: Path, tmp_path: Path) -> Iterator[int]:
    """A Sentinel on a free port that monitors ``secured`` as ``mymaster``; yields its port."""
    port = free_port()
    workdir = tmp_path / "sentinel"
    workdir.mkdir()
    conf = workdir / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {workdir}\nlogfile {workdir / 'sentinel.log'}\n"
        f"sentinel monitor mymaster 127.0.0.1 {secured.port} 1\n"
        f"sentinel auth-pass mymaster {PASSWORD}\n"
    )
    process = subprocess.Popen(
        [str(binary), str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15.0
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1) as probe:
            while True:
                assert process.poll() is None, (workdir / "sentinel.log").read_text()
                try:
                    if probe.sentinel_get_master_addr_by_name("mymaster"):
                        break
                except redis.RedisError:
                    pass
                assert time.monotonic() < deadline, "the sentinel did not come up"
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_sentinel_writes_land_on_the_master(
    secured: RedisServer, sentinel: int
) -> None:
    """Through Sentinel the client reaches the master, in the URL's db, with the password."""
    # The URL's host and port are ignored: Sentinel names the master.
    unused = free_port()
    settings = RedisSettings(
        url=f"redis://127.0.0.1:{unused}/2",
        password=Secret(PASSWORD),
        sentinels=(("127.0.0.1", sentinel),),
        sentinel_master="mymaster",
    )
    with connect(settings) as client:
        client.set(b"through-sentinel", b"yes")
        assert client.info("server")["tcp_port"] == secured.port
        assert "rq-janitor" in client_names(secured)
    with direct(secured, 2) as plain:
        assert plain.get(b"through-sentinel") == b"yes"


def test_sentinel_naming_an_unknown_master_is_unavailable(
    secured: RedisServer, sentinel: int
) -> None:
    """A master name the Sentinel does not know raises RedisUnavailable that names it."""
    settings = RedisSettings(
        url=f"redis://127.0.0.1:{free_port()}/0",
        sentinels=(("127.0.0.1", sentinel),),
        sentinel_master="nosuchmaster",
    )
    with pytest.raises(RedisUnavailable, match="nosuchmaster"):
        connect(settings)
