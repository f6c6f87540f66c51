"""One command packed by hand into one buffer: sent on a connection now, its reply read later.

The fast path of ``expire_jobs`` sends a script call per page and reads its answer only
after the next page has gone out, so Redis runs one page while the janitor audits the one
before. redis-py's own command path packs each argument through several calls, sends in
6 kB pieces and reads the reply at once; the rest (connections, retries, SCRIPT LOAD) is
redis-py's.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import redis
from redis.connection import Connection
from redis.exceptions import NoScriptError


def resp(parts: Sequence[bytes]) -> bytes:
    """A command in the Redis protocol (RESP), as one buffer."""
    bulks = b"".join([b"$%d\r\n%b\r\n" % (len(part), part) for part in parts])
    return b"*%d\r\n" % len(parts) + bulks


_SENDER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="janitor-send")
SEND_IN_BACKGROUND = 16_384
"""Bytes above which a command is sent by a background thread: Redis takes a large
command in pieces, and the janitor prepares the next page meanwhile."""


class Call:
    """One packed command on the caller's connection: sent now, its reply read later, once.

    The caller keeps the connection (taking one from redis-py's pool costs two system
    calls: its check for unread data) and reads replies in the order it sent. A failed
    connection is retried as redis-py would (a write script's memo key makes a
    retry return the first run's reply), and ``script`` is loaded again when the server
    lost it (NOSCRIPT).
    """

    def __init__(
        self,
        client: redis.Redis,
        command: bytes,
        script: str | None,
        conn: Connection,
    ) -> None:
        """Send ``command`` (from ``resp``) on ``conn``."""
        self.client, self.script, self.command, self.conn = (
            client,
            script,
            command,
            conn,
        )
        self.failed: Exception | None = None
        self.sent: Future[Exception | None] | None = None
        if len(command) > SEND_IN_BACKGROUND:
            self.sent = _SENDER.submit(self._send_now)
        else:
            self.failed = self._send_now()

    def _send(self) -> None:
        self.conn.send_packed_command([self.command])  # type: ignore[no-untyped-call]  # redis-py leaves it untyped

    def _send_now(self) -> Exception | None:
        try:
            self._send()
        except (redis.ConnectionError, redis.TimeoutError) as err:
            return err
        return None

    def _again(self) -> object:
        self._send()
        return self._read_reply()

    def _read_reply(self) -> object:
        try:
            return self.conn.read_response()
        except NoScriptError:
            raise  # a whole reply: nothing is left unread
        except Exception as err:  # part of the reply may be left unread: start afresh
            self._fail(err)
            raise

    def _fail(self, _: Exception) -> None:
        self.conn.disconnect()  # type: ignore[no-untyped-call]  # as above

    def receive(self) -> object:
        """The reply (after retries, as redis-py would)."""
        if self.sent is not None:
            self.failed = self.sent.result()
        if self.failed is not None:
            return self.conn.retry.call_with_retry(self._again, self._fail)
        return self._read()

    def _read(self) -> object:
        try:
            return self._read_reply()
        except (redis.ConnectionError, redis.TimeoutError):
            return self.conn.retry.call_with_retry(self._again, self._fail)
        except NoScriptError:
            if self.script is None:
                raise
            self.client.script_load(self.script)
            return self.conn.retry.call_with_retry(self._again, self._fail)
