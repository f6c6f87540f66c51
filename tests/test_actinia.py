"""actinia INI reading: option names, legacy fall-back, "None", ports, env overrides, and the janitor settings it feeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from janitor.config import load_settings
from janitor.config.actinia import ActiniaQueue, read_actinia_queue
from janitor.errors import ConfigError

DATA = Path(__file__).parent / "data"
KVDB_INI = str(DATA / "actinia-kvdb.ini")
LEGACY_INI = str(DATA / "actinia-legacy.ini")
ROUNDTRIP_INI = str(DATA / "actinia-roundtrip.ini")
WHERE = "janitor.toml: [actinia] config"
KVDB_PW = "queue-pw-%-kvdb"  # as written in the INI: "queue-pw-%%-kvdb"
LEGACY_PW = "queue-pw-legacy"
ENV_PW = "env-pw"


def ini(tmp_path: Path, text: str) -> str:
    """Write an actinia INI file and return its path."""
    path = tmp_path / "actinia.cfg"
    path.write_text(text, encoding="utf-8")
    return str(path)


def read(path: str, env: dict[str, str] | None = None) -> ActiniaQueue:
    """Read ``path`` with only the given environment."""
    return read_actinia_queue(path, env or {}, WHERE)


class TestOptionNames:
    """Which options count, under which names."""

    def test_kvdb_names(self) -> None:
        """The >= 6.0 kvdb_queue_server_* options give host, port, password, prefix, type and job TTL."""
        queue = read(KVDB_INI)
        assert (queue.host, queue.port) == ("valkey-queue", 6377)
        assert queue.password == KVDB_PW  # BasicInterpolation: %% is a literal %
        assert queue.worker_queue_prefix == "job_queue"
        assert queue.queue_type == "per_job"
        assert queue.job_ttl == "3600"
        assert queue.redis_url == "redis://valkey-queue:6377/0"
        assert queue.queue_globs == ("job_queue_*",)
        assert queue.sources["host"] == f"actinia {KVDB_INI}"

    def test_legacy_names(self) -> None:
        """Without kvdb_* options, the legacy redis_queue_server_* options are read."""
        queue = read(LEGACY_INI)
        assert queue.redis_url == "redis://redis-queue:6380/0"
        assert queue.password == LEGACY_PW
        assert queue.queue_globs == ("legacy_jobs_*",)
        assert queue.queue_type == "redis"

    def test_legacy_ignored_when_kvdb_present(self, tmp_path: Path) -> None:
        """A legacy option counts only when its kvdb_ twin is absent, even if the twin says "None"."""
        path = ini(
            tmp_path,
            "[QUEUE]\nkvdb_queue_server_url = new-host\nredis_queue_server_url = old-host\n"
            "kvdb_queue_server_password = None\nredis_queue_server_password = old-pw\n",
        )
        queue = read(path)
        assert queue.host == "new-host"
        assert queue.password is None

    def test_option_names_case_insensitive(self, tmp_path: Path) -> None:
        """Option names match in any case, as configparser (and so actinia) matches them."""
        path = ini(tmp_path, "[QUEUE]\nKVDB_QUEUE_SERVER_URL = upper-host\n")
        assert read(path).host == "upper-host"

    def test_section_name_case_sensitive(self, tmp_path: Path) -> None:
        """A [queue] section is not [QUEUE]: its options are ignored and actinia's defaults apply."""
        path = ini(tmp_path, "[queue]\nkvdb_queue_server_url = ignored\n")
        queue = read(path)
        assert queue.redis_url == "redis://127.0.0.1:6379/0"

    def test_defaults_without_queue_section(self, tmp_path: Path) -> None:
        """An INI without [QUEUE] gives actinia's defaults: 127.0.0.1:6379, no password, job_queue_*."""
        queue = read(ini(tmp_path, "[KVDB]\nkvdb_server_url = somewhere\n"))
        assert queue.redis_url == "redis://127.0.0.1:6379/0"
        assert queue.password is None
        assert queue.queue_globs == ("job_queue_*",)

    def test_none_and_empty_are_unset(self) -> None:
        """The literal "None" that actinia's write() produces, and "", count as unset."""
        queue = read(ROUNDTRIP_INI)
        assert queue.password is None
        assert queue.job_ttl is None
        assert queue.redis_url == "redis://10.0.0.7:6379/0"

    def test_empty_host_is_unset(self, tmp_path: Path) -> None:
        """An empty kvdb_queue_server_url falls back to actinia's default host."""
        path = ini(tmp_path, "[QUEUE]\nkvdb_queue_server_url =\n")
        assert read(path).host == "127.0.0.1"

    def test_ipv6_host_is_bracketed(self, tmp_path: Path) -> None:
        """An IPv6 host becomes a valid URL authority."""
        path = ini(tmp_path, "[QUEUE]\nkvdb_queue_server_url = ::1\n")
        assert read(path).redis_url == "redis://[::1]:6379/0"

    def test_repr_hides_password(self) -> None:
        """The password never shows in the dataclass repr."""
        assert "queue-pw" not in repr(read(KVDB_INI))


class TestErrors:
    """Bad INI content fails fast, naming the file and key, never the password."""

    @pytest.mark.parametrize("port", ["abc", "6379.0", "0", "70000", "-1"])
    def test_bad_port(self, tmp_path: Path, port: str) -> None:
        """A port that is not an integer 1-65535 raises ConfigError naming the INI file and key."""
        path = ini(tmp_path, f"[QUEUE]\nkvdb_queue_server_port = {port}\n")
        with pytest.raises(ConfigError) as err:
            read(path)
        assert str(err.value).startswith(f"{path}: [QUEUE] kvdb_queue_server_port:")
        assert repr(port) in str(err.value)

    def test_bad_legacy_port_names_legacy_key(self, tmp_path: Path) -> None:
        """A bad legacy port is reported under the legacy option's name."""
        path = ini(tmp_path, "[QUEUE]\nredis_queue_server_port = x\n")
        with pytest.raises(ConfigError, match=r"\[QUEUE\] redis_queue_server_port"):
            read(path)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing INI raises ConfigError naming the setting that pointed at it and the path."""
        path = str(tmp_path / "nope.cfg")
        with pytest.raises(ConfigError) as err:
            read(path)
        assert str(err.value).startswith(WHERE)
        assert path in str(err.value)

    def test_bad_interpolation_hides_value(self, tmp_path: Path) -> None:
        """A bare '%' breaks actinia too: ConfigError names the key but not the password."""
        path = ini(tmp_path, "[QUEUE]\nkvdb_queue_server_password = s3cr%t-pw\n")
        with pytest.raises(ConfigError) as err:
            read(path)
        assert "kvdb_queue_server_password" in str(err.value)
        assert "s3cr" not in str(err.value)

    def test_unparsable_lines_hide_content(self, tmp_path: Path) -> None:
        """A syntax error is reported by line number only: the line might be a password."""
        path = ini(tmp_path, "[QUEUE]\nkvdb_queue_server_url = h\nhunter2-secret\n")
        with pytest.raises(ConfigError) as err:
            read(path)
        assert "line 3" in str(err.value)
        assert "hunter2" not in str(err.value)

    def test_no_section_header(self, tmp_path: Path) -> None:
        """An option before any [section] is reported by line number only."""
        path = ini(tmp_path, "kvdb_queue_server_password = hunter2\n")
        with pytest.raises(ConfigError, match="line 1") as err:
            read(path)
        assert "hunter2" not in str(err.value)


class TestEnvOverrides:
    """The env vars override the INI, as actinia's Configuration.read does."""

    def test_env_beats_ini(self) -> None:
        """KVDB_QUEUE_SERVER_URL/_PORT/_PW replace the INI values and are named as sources."""
        env = {
            "KVDB_QUEUE_SERVER_URL": "env-host",
            "KVDB_QUEUE_SERVER_PORT": "7000",
            "KVDB_QUEUE_SERVER_PW": ENV_PW,
        }
        queue = read(KVDB_INI, env)
        assert queue.redis_url == "redis://env-host:7000/0"
        assert queue.password == ENV_PW
        assert dict(queue.sources) == {
            "host": "env KVDB_QUEUE_SERVER_URL",
            "port": "env KVDB_QUEUE_SERVER_PORT",
            "password": "env KVDB_QUEUE_SERVER_PW",
            "job_ttl": f"actinia {KVDB_INI}",
            "worker_queue_prefix": f"actinia {KVDB_INI}",
            "queue_type": f"actinia {KVDB_INI}",
        }

    def test_password_env_is_pw_not_password(self) -> None:
        """The env password is ..._PW; a ..._PASSWORD variable is not actinia's and is ignored."""
        queue = read(KVDB_INI, {"KVDB_QUEUE_SERVER_PASSWORD": ENV_PW})
        assert queue.password == KVDB_PW

    def test_legacy_env_only_when_new_unset(self) -> None:
        """REDIS_QUEUE_SERVER_* apply only when the KVDB_QUEUE_SERVER_* twin is unset or empty."""
        both = read(
            KVDB_INI, {"KVDB_QUEUE_SERVER_URL": "new", "REDIS_QUEUE_SERVER_URL": "old"}
        )
        assert both.host == "new"
        env = {
            "KVDB_QUEUE_SERVER_URL": "",
            "REDIS_QUEUE_SERVER_URL": "old",
            "REDIS_QUEUE_SERVER_PW": ENV_PW,
        }
        legacy = read(KVDB_INI, env)
        assert (legacy.host, legacy.password) == ("old", ENV_PW)

    def test_none_env_is_unset(self) -> None:
        """An env value "None" does not replace the INI value."""
        assert read(KVDB_INI, {"KVDB_QUEUE_SERVER_PW": "None"}).password == KVDB_PW

    def test_bad_env_port_names_variable(self) -> None:
        """A non-integer env port raises ConfigError naming the variable."""
        with pytest.raises(ConfigError, match=r"^env KVDB_QUEUE_SERVER_PORT: "):
            read(KVDB_INI, {"KVDB_QUEUE_SERVER_PORT": "sixty"})

    def test_env_port_rescues_bad_ini_port(self, tmp_path: Path) -> None:
        """An env port replaces a bad INI port before it is validated, as actinia's override would."""
        path = ini(tmp_path, "[QUEUE]\nkvdb_queue_server_port = bad\n")
        assert read(path, {"KVDB_QUEUE_SERVER_PORT": "6390"}).port == 6390


class TestSettings:
    """What the actinia INI contributes to the janitor's settings."""

    def toml(self, tmp_path: Path, text: str) -> str:
        """Write a janitor TOML file and return its path."""
        path = tmp_path / "janitor.toml"
        path.write_text(text, encoding="utf-8")
        return str(path)

    def test_url_password_and_allowlist(self, tmp_path: Path) -> None:
        """[actinia] config yields redis url, password and the "<prefix>_*" allowlist, sourced to actinia."""
        path = self.toml(tmp_path, f'[actinia]\nconfig = "{KVDB_INI}"\n')
        settings = load_settings(config_path=path, env={})
        assert settings.redis.url == "redis://valkey-queue:6377/0"
        assert settings.redis.password is not None
        assert settings.redis.password.reveal() == KVDB_PW
        assert settings.rq.queues == ("job_queue_*",)
        source = f"actinia {KVDB_INI}"
        assert settings.sources["redis.url"] == source
        assert settings.sources["redis.password"] == source
        assert settings.sources["rq.queues"] == source
        assert settings.sources["actinia.config"] == f"file {path}"
        assert settings.actinia.config == KVDB_INI

    def test_rq_queues_in_file_beats_prefix(self, tmp_path: Path) -> None:
        """[rq] queues set in the TOML file replaces the allowlist derived from worker_queue_prefix."""
        path = self.toml(
            tmp_path,
            f'[actinia]\nconfig = "{KVDB_INI}"\n[rq]\nqueues = ["job_queue_0"]\n',
        )
        settings = load_settings(config_path=path, env={})
        assert settings.rq.queues == ("job_queue_0",)
        assert settings.sources["rq.queues"] == f"file {path}"

    def test_file_url_beats_actinia(self, tmp_path: Path) -> None:
        """[redis] url in the TOML file beats the actinia URL; the actinia password still applies."""
        path = self.toml(
            tmp_path,
            f'[actinia]\nconfig = "{KVDB_INI}"\n[redis]\nurl = "redis://other:1/2"\n',
        )
        settings = load_settings(config_path=path, env={})
        assert settings.redis.url == "redis://other:1/2"
        assert settings.sources["redis.password"] == f"actinia {KVDB_INI}"

    def test_actinia_env_overrides_reach_settings(self, tmp_path: Path) -> None:
        """The env overrides shape the URL and name both sources."""
        path = self.toml(tmp_path, f'[actinia]\nconfig = "{KVDB_INI}"\n')
        settings = load_settings(
            config_path=path, env={"KVDB_QUEUE_SERVER_PORT": "7001"}
        )
        assert settings.redis.url == "redis://valkey-queue:7001/0"
        assert settings.sources["redis.url"] == (
            f"actinia {KVDB_INI} + env KVDB_QUEUE_SERVER_PORT"
        )

    def test_env_janitor_actinia_config(self) -> None:
        """JANITOR_ACTINIA_CONFIG names the actinia INI without any TOML file."""
        settings = load_settings(env={"JANITOR_ACTINIA_CONFIG": LEGACY_INI})
        assert settings.redis.url == "redis://redis-queue:6380/0"
        assert settings.rq.queues == ("legacy_jobs_*",)
        assert settings.sources["actinia.config"] == "env JANITOR_ACTINIA_CONFIG"

    def test_missing_ini_is_config_error(self, tmp_path: Path) -> None:
        """A missing INI named by [actinia] config raises ConfigError naming the key and the path."""
        missing = str(tmp_path / "absent.cfg")
        path = self.toml(tmp_path, f'[actinia]\nconfig = "{missing}"\n')
        with pytest.raises(ConfigError) as err:
            load_settings(config_path=path, env={})
        assert str(err.value).startswith(f"{path}: [actinia] config: ")
        assert missing in str(err.value)

    def test_janitor_password_file_beats_actinia_password(self, tmp_path: Path) -> None:
        """A password_file in the TOML file (higher precedence) replaces actinia's password."""
        secret = tmp_path / "valkey"
        secret.write_text("file-pw\n", encoding="utf-8")
        path = self.toml(
            tmp_path,
            f'[actinia]\nconfig = "{KVDB_INI}"\n[redis]\npassword_file = "{secret}"\n',
        )
        settings = load_settings(config_path=path, env={})
        assert settings.redis.password is not None
        assert settings.redis.password.reveal() == "file-pw"
        assert settings.sources["redis.password"] == f"file {path}"
