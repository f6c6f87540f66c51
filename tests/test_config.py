"""Settings loading: values, validation messages, precedence and sources, secrets, rendering, example files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from janitor.config import (
    DEFAULT_SCHEDULES,
    TASK_NAMES,
    Schedule,
    Settings,
    load_settings,
    parse_duration,
    parse_schedule,
    redact_url,
    render_settings,
)
from janitor.config.settings import SECTIONS
from janitor.errors import EXIT_CONFIG, ConfigError

ROOT = Path(__file__).parent.parent
DATA = Path(__file__).parent / "data"
WHERE = "janitor.toml: [retention] failed"
PW = "s3cret-Pa55word"


def toml(tmp_path: Path, text: str, name: str = "janitor.toml") -> str:
    """Write a TOML file and return its path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def error_of(tmp_path: Path, text: str) -> str:
    """Load ``text`` as the config file and return the ConfigError message."""
    with pytest.raises(ConfigError) as err:
        load_settings(config_path=toml(tmp_path, text), env={})
    return str(err.value)


class TestDurations:
    """parse_duration: the accepted forms and the rejected ones."""

    @pytest.mark.parametrize(
        ("value", "seconds"),
        [
            ("90s", 90),
            ("15m", 900),
            ("1h", 3600),
            ("7d", 604_800),
            ("2w", 1_209_600),
            ("0s", 0),
            (0, 0),
            (42, 42),
            ("42", 42),
        ],
    )
    def test_good(self, value: object, seconds: int) -> None:
        """Suffixed durations, integer seconds and digit strings give seconds."""
        assert parse_duration(value, WHERE) == seconds

    @pytest.mark.parametrize(
        "value",
        [
            True,
            False,
            -1,
            1.5,
            "abc",
            "",
            "-5s",
            "1.5h",
            "5 m",
            "5M",
            "1h30m",
            " 5m",
            None,
            [],
        ],
    )
    def test_bad(self, value: object) -> None:
        """Bools, negatives, floats, unknown units, blanks and compounds raise ConfigError."""
        with pytest.raises(
            ConfigError, match=f"^{re.escape(WHERE)}: expected a duration"
        ):
            parse_duration(value, WHERE)

    def test_message(self) -> None:
        """The message names the place, the expectation and the bad value."""
        with pytest.raises(ConfigError) as err:
            parse_duration("abc", WHERE)
        assert str(err.value) == (
            "janitor.toml: [retention] failed: expected a duration like '30d' "
            "or integer seconds, got 'abc'"
        )
        assert err.value.exit_code == EXIT_CONFIG


class TestSchedules:
    """parse_schedule: intervals and cron lines as APScheduler 3.x accepts them."""

    def test_interval(self) -> None:
        """An "every 30s" schedule is an interval in seconds."""
        assert parse_schedule("every 30s", "x") == Schedule("every 30s", interval_s=30)
        assert parse_schedule("every 5m", "x").interval_s == 300
        assert parse_schedule("every 90", "x").interval_s == 90

    def test_cron(self) -> None:
        """A 5-field cron line is kept as text and as the normalised cron."""
        schedule = parse_schedule("0  3 * * 1-5", "x")
        assert (schedule.text, schedule.interval_s, schedule.cron) == (
            "0  3 * * 1-5",
            None,
            "0 3 * * 1-5",
        )

    @pytest.mark.parametrize(
        "value",
        [
            "every 0s",
            "every",
            "every -1m",
            "hourly",
            "0 3 * *",
            "0 3 * * * *",
            "61 * * * *",
            "*/0 * * * *",
            "0 3 * * mon-xyz",
            "",
            5,
            None,
        ],
    )
    def test_bad(self, value: object) -> None:
        """Zero intervals, wrong field counts and cron lines APScheduler rejects raise ConfigError."""
        with pytest.raises(
            ConfigError, match=r"^janitor.toml: \[schedule\] expire_jobs: "
        ):
            parse_schedule(value, "janitor.toml: [schedule] expire_jobs")

    def test_defaults_for_every_task(self) -> None:
        """Settings.schedule holds a Schedule for every task and the memory check, from DEFAULT_SCHEDULES."""
        settings = load_settings(env={})
        assert tuple(settings.schedule) == (*TASK_NAMES, "memory")
        assert settings.schedule["memory"].interval_s == 15
        for task in TASK_NAMES:
            assert settings.schedule[task].text == DEFAULT_SCHEDULES[task]
            assert settings.sources[f"schedule.{task}"] == "default"
        assert settings.schedule["sweep_orphans"].cron == "0 3 * * *"

    def test_settings_default_has_every_task(self) -> None:
        """A Settings() built directly also holds the default Schedule for every task."""
        assert Settings().schedule == load_settings(env={}).schedule

    def test_file_overrides_one_task(self, tmp_path: Path) -> None:
        """A [schedule] key replaces that task's schedule only."""
        path = toml(tmp_path, '[schedule]\nprune_queues = "*/10 * * * *"\n')
        settings = load_settings(config_path=path, env={})
        assert settings.schedule["prune_queues"].cron == "*/10 * * * *"
        assert settings.schedule["expire_jobs"].interval_s == 300
        assert settings.sources["schedule.prune_queues"] == f"file {path}"

    def test_unknown_task(self, tmp_path: Path) -> None:
        """An unknown task name under [schedule] is an error that suggests the closest task."""
        message = error_of(tmp_path, '[schedule]\nexpire_job = "every 1m"\n')
        assert message.endswith(
            "unknown key [schedule] expire_job; did you mean 'expire_jobs'?"
        )


class TestUnknownKeys:
    """Unknown sections and keys are errors that name the key and suggest the closest one."""

    def test_key_with_suggestion(self, tmp_path: Path) -> None:
        """A misspelt key names file, section and key and suggests the known key."""
        path = toml(tmp_path, '[retention]\nfaild = "1d"\n')
        with pytest.raises(ConfigError) as err:
            load_settings(config_path=path, env={})
        assert str(err.value) == (
            f"{path}: unknown key [retention] faild; did you mean 'failed'?"
        )
        assert err.value.exit_code == EXIT_CONFIG

    def test_section_with_suggestion(self, tmp_path: Path) -> None:
        """A misspelt section is named and the closest section suggested."""
        message = error_of(tmp_path, '[retentoin]\nfailed = "1d"\n')
        assert message.endswith(
            "unknown section [retentoin]; did you mean 'retention'?"
        )

    def test_no_close_match_lists_known(self, tmp_path: Path) -> None:
        """Without a close match, the known keys are listed."""
        message = error_of(tmp_path, "[abandoned]\nzzz = 1\n")
        assert message.endswith("unknown key [abandoned] zzz; known: action")

    def test_key_in_rule(self, tmp_path: Path) -> None:
        """An unknown key inside a [[retention.rules]] entry names the rule's position."""
        message = error_of(
            tmp_path,
            '[[retention.rules]]\nqueues = ["a"]\n[[retention.rules]]\nqueues = ["b"]\nfinshed = "1h"\n',
        )
        assert message.endswith(
            "unknown key [[retention.rules]][1] finshed; did you mean 'finished'?"
        )

    def test_top_level_key(self, tmp_path: Path) -> None:
        """A key outside any section is an unknown section."""
        message = error_of(tmp_path, 'url = "redis://x"\n')
        assert "unknown section [url]" in message


class TestWrongValues:
    """Wrong types and values name file, section, key and the bad value."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            (
                '[rq]\nqueues = "x"\n',
                "[rq] queues: expected a non-empty list of queue globs",
            ),
            ("[rq]\nqueues = []\n", "[rq] queues: expected a non-empty list"),
            ('[rq]\nqueues = ["a", ""]\n', "[rq] queues: expected a non-empty list"),
            ('[rq]\nkey_prefix = ""\n', "[rq] key_prefix: expected a non-empty string"),
            (
                "[retention]\nkeep_last = 0\n",
                "[retention] keep_last: expected a positive integer, got 0",
            ),
            (
                "[retention]\nkeep_last = true\n",
                "[retention] keep_last: expected a positive integer, got True",
            ),
            (
                "[retention]\nfinished = 1.5\n",
                "[retention] finished: expected a duration",
            ),
            (
                '[workers]\ndead_after = "0s"\n',
                "[workers] dead_after: expected a duration longer than 0s",
            ),
            (
                '[queues]\nprune_after = "soon"\n',
                "[queues] prune_after: expected a duration",
            ),
            (
                '[memory]\nbudget = "lots"\n',
                "[memory] budget: expected a share of maxmemory",
            ),
            (
                '[memory]\nbudget = "120%"\n',
                "[memory] budget: expected a share of maxmemory",
            ),
            (
                '[deferred]\nstuck = "delete"\n',
                "[deferred] stuck",
            ),
            (
                '[abandoned]\naction = "delete"\n',
                "[abandoned] action: expected one of 'fail' | 'requeue' | 'report', got 'delete'",
            ),
            (
                '[http]\nlisten = "localhost:99999"\n',
                "[http] listen: expected 'host:port', got 'localhost:99999'",
            ),
            ('[http]\nlisten = "9808"\n', "[http] listen: expected 'host:port'"),
            (
                '[daemon]\nlease_ttl = "2s"\n',
                "[daemon] lease_ttl: expected a duration of at least 3s, got '2s'",
            ),
            (
                '[daemon]\nlease_key = ""\n',
                "[daemon] lease_key: expected a non-empty string",
            ),
            (
                "[limits]\nmax_ops_per_s = 0\n",
                "[limits] max_ops_per_s: expected a positive integer",
            ),
            (
                '[redis]\nurl = "http://x"\n',
                "[redis] url: expected a redis://, rediss:// or unix:// URL, got 'http://x'",
            ),
            ('[redis]\nurl = "redis://h:port/0"\n', "[redis] url: expected a redis://"),
            (
                '[redis]\nsentinels = "h:1"\n',
                "[redis] sentinels: expected a list of 'host:port' strings",
            ),
            (
                '[redis]\nsentinels = ["h"]\nsentinel_master = "m"\n',
                "[redis] sentinels: expected 'host:port', got 'h'",
            ),
            (
                "[redis]\nssl_ca_certs = 1\n",
                "[redis] ssl_ca_certs: expected a non-empty string, got 1",
            ),
            ('redis = "x"\n', "[redis] must be a table"),
            (
                "[retention.rules]\nqueues = ['a']\n",
                "[[retention.rules]]: expected an array of tables",
            ),
            (
                '[[retention.rules]]\nfinished = "1h"\n',
                "[[retention.rules]][0]: missing required key 'queues'",
            ),
            (
                "[[retention.rules]]\nqueues = []\n",
                "[[retention.rules]][0] queues: expected a non-empty list",
            ),
            (
                '[[retention.rules]]\nqueues = ["a"]\nfailed = "x"\n',
                "[[retention.rules]][0] failed: expected a duration like '30d' or integer seconds, got 'x'",
            ),
        ],
    )
    def test_message(self, tmp_path: Path, text: str, expected: str) -> None:
        """The message starts with the file and contains section, key and value."""
        message = error_of(tmp_path, text)
        assert message.startswith(str(tmp_path / "janitor.toml") + ": ")
        assert expected in message

    def test_sentinels_need_master(self) -> None:
        """Sentinels without sentinel_master (or the reverse) is an error naming the one given."""
        with pytest.raises(
            ConfigError,
            match=r"^env JANITOR_REDIS_SENTINELS: .*sentinel_master is not set",
        ):
            load_settings(env={"JANITOR_REDIS_SENTINELS": "h:26379"})
        with pytest.raises(
            ConfigError,
            match=r"^env JANITOR_REDIS_SENTINEL_MASTER: .*sentinels is not set",
        ):
            load_settings(env={"JANITOR_REDIS_SENTINEL_MASTER": "m"})

    def test_bad_env_names_variable(self) -> None:
        """A bad env value names the variable."""
        with pytest.raises(
            ConfigError, match=r"^env JANITOR_REDIS_SENTINELS: expected 'host:port'"
        ):
            load_settings(
                env={
                    "JANITOR_REDIS_SENTINELS": "a:1,b",
                    "JANITOR_REDIS_SENTINEL_MASTER": "m",
                }
            )
        with pytest.raises(ConfigError, match=r"^env JANITOR_REDIS_URL: "):
            load_settings(env={"JANITOR_REDIS_URL": "localhost:6379"})

    def test_bad_flag_names_flag(self) -> None:
        """A bad flag value names the flag."""
        with pytest.raises(ConfigError, match=r"^flag --log-format: expected one of"):
            load_settings(env={}, log_format="xml")
        with pytest.raises(ConfigError, match=r"^flag --redis-url: "):
            load_settings(env={}, redis_url="mysql://x")


class TestFiles:
    """Finding and reading the TOML file."""

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing config file raises ConfigError naming it."""
        path = str(tmp_path / "absent.toml")
        with pytest.raises(
            ConfigError, match=f"^{re.escape(path)}: cannot read config file"
        ):
            load_settings(config_path=path, env={})

    def test_directory(self, tmp_path: Path) -> None:
        """A directory instead of a file raises ConfigError naming it."""
        with pytest.raises(ConfigError, match="cannot read config file"):
            load_settings(config_path=str(tmp_path), env={})

    def test_invalid_toml_names_line(self, tmp_path: Path) -> None:
        """A TOML syntax error names the file and the line."""
        message = error_of(tmp_path, '[redis]\nurl = "redis://x"\nfailed = = 3\n')
        assert "invalid TOML" in message
        assert "line 3" in message

    def test_env_janitor_config(self, tmp_path: Path) -> None:
        """JANITOR_CONFIG names the file when no path is passed; the path argument beats it."""
        env_file = toml(tmp_path, '[rq]\nkey_prefix = "env"\n', "env.toml")
        flag_file = toml(tmp_path, '[rq]\nkey_prefix = "flag"\n', "flag.toml")
        by_env = load_settings(env={"JANITOR_CONFIG": env_file})
        assert (by_env.rq.key_prefix, by_env.config_path) == ("env", env_file)
        assert by_env.sources["config_path"] == "env JANITOR_CONFIG"
        by_flag = load_settings(config_path=flag_file, env={"JANITOR_CONFIG": env_file})
        assert by_flag.rq.key_prefix == "flag"
        assert by_flag.sources["config_path"] == "flag --config"

    def test_no_file_is_all_defaults(self) -> None:
        """Without a file every value is the dataclass default and sourced "default"."""
        settings = load_settings(env={})
        assert settings.config_path is None
        assert settings.redis == Settings().redis
        assert settings.retention == Settings().retention
        assert set(settings.sources.values()) == {"default"}

    def test_empty_env_values_are_unset(self) -> None:
        """An empty JANITOR_* variable counts as unset."""
        settings = load_settings(env={"JANITOR_REDIS_URL": "", "JANITOR_CONFIG": ""})
        assert settings.sources["redis.url"] == "default"

    def test_extra_env_vars(self, tmp_path: Path) -> None:
        """JANITOR_REDIS_SENTINELS, _SENTINEL_MASTER and _TLS_CA_FILE fill the [redis] keys."""
        settings = load_settings(
            env={
                "JANITOR_REDIS_SENTINELS": "10.0.0.1:26379, [::1]:26380",
                "JANITOR_REDIS_SENTINEL_MASTER": "mymaster",
                "JANITOR_REDIS_TLS_CA_FILE": "/etc/ca.pem",
            }
        )
        assert settings.redis.sentinels == (("10.0.0.1", 26379), ("::1", 26380))
        assert settings.redis.sentinel_master == "mymaster"
        assert settings.redis.ssl_ca_certs == "/etc/ca.pem"
        assert settings.sources["redis.ssl_ca_certs"] == "env JANITOR_REDIS_TLS_CA_FILE"


class TestPrecedence:
    """defaults < actinia INI < TOML file < JANITOR_* env < CLI flags, each with its source."""

    ACTINIA = str(DATA / "actinia-kvdb.ini")

    def load(self, tmp_path: Path, level: str) -> Settings:
        """Set redis.url at every level up to ``level`` and load."""
        levels = ["default", "actinia", "file", "env", "flag"]
        upto = levels[: levels.index(level) + 1]
        text = f'[actinia]\nconfig = "{self.ACTINIA}"\n' if "actinia" in upto else ""
        if "file" in upto:
            text += '[redis]\nurl = "redis://file:1/0"\n'
        env = {"JANITOR_REDIS_URL": "redis://env:2/0"} if "env" in upto else {}
        flag = "redis://flag:3/0" if "flag" in upto else None
        return load_settings(config_path=toml(tmp_path, text), env=env, redis_url=flag)

    @pytest.mark.parametrize(
        ("level", "url", "source"),
        [
            ("default", "redis://localhost:6379/0", "default"),
            ("actinia", "redis://valkey-queue:6377/0", f"actinia {ACTINIA}"),
            ("file", "redis://file:1/0", "file {path}"),
            ("env", "redis://env:2/0", "env JANITOR_REDIS_URL"),
            ("flag", "redis://flag:3/0", "flag --redis-url"),
        ],
    )
    def test_levels(self, tmp_path: Path, level: str, url: str, source: str) -> None:
        """The highest level that sets redis.url wins and is named as its source."""
        settings = self.load(tmp_path, level)
        assert settings.redis.url == url
        path = tmp_path / "janitor.toml"
        assert settings.sources["redis.url"] == source.format(path=path)

    def test_log_format_flag(self) -> None:
        """--log-format beats the default and is named as the source."""
        settings = load_settings(env={}, log_format="json")
        assert settings.log_format == "json"
        assert settings.sources["log_format"] == "flag --log-format"

    def test_every_key_has_a_source(self, tmp_path: Path) -> None:
        """Every effective dotted key has a source, and only the keys set elsewhere are not default."""
        path = toml(
            tmp_path,
            '[retention]\nfailed = "7d"\n[[retention.rules]]\nqueues = ["a"]\n',
        )
        settings = load_settings(config_path=path, env={"JANITOR_REDIS_PASSWORD": PW})
        expected = {
            "redis.url",
            "redis.password",
            "redis.password_file",
            "redis.sentinels",
            "redis.sentinel_master",
            "redis.ssl_ca_certs",
            "redis.ssl_certfile",
            "redis.ssl_keyfile",
            "rq.key_prefix",
            "rq.queues",
            "retention.finished",
            "retention.failed",
            "retention.stopped",
            "retention.canceled",
            "retention.keep_last",
            "retention.rules",
            "workers.dead_after",
            "queues.prune_after",
            "deferred.stuck",
            "memory.budget",
            "memory.keep_for",
            "abandoned.action",
            "audit.path",
            "http.listen",
            "daemon.lease_key",
            "daemon.lease_ttl",
            "limits.max_ops_per_s",
            "actinia.config",
            "log_format",
            "config_path",
            *(f"schedule.{task}" for task in TASK_NAMES),
            "schedule.memory",
        }
        assert set(settings.sources) == expected
        changed = {k: v for k, v in settings.sources.items() if v != "default"}
        assert changed == {
            "retention.failed": f"file {path}",
            "retention.rules": f"file {path}",
            "redis.password": "env JANITOR_REDIS_PASSWORD",
            "redis.password_file": "env JANITOR_REDIS_PASSWORD",
            "config_path": "flag --config",
        }


class TestRules:
    """[[retention.rules]]: file order, index and the states each names."""

    def test_order_and_shape(self, tmp_path: Path) -> None:
        """Rules keep file order; each holds its globs, only the states it names, and keep_last."""
        path = toml(
            tmp_path,
            '[[retention.rules]]\nqueues = ["job_queue_resource_id-*"]\nfinished = "1h"\n'
            'failed = "7d"\n[[retention.rules]]\nqueues = ["job_queue_*", "other"]\n'
            'keep_last = 50\n[[retention.rules]]\nqueues = ["*"]\n',
        )
        rules = load_settings(config_path=path, env={}).retention.rules
        assert [rule.index for rule in rules] == [0, 1, 2]
        assert rules[0].queues == ("job_queue_resource_id-*",)
        assert dict(rules[0].ages) == {"finished": 3600, "failed": 604_800}
        assert rules[0].keep_last is None
        assert rules[1].queues == ("job_queue_*", "other")
        assert dict(rules[1].ages) == {}
        assert rules[1].keep_last == 50
        assert rules[2].queues == ("*",)

    def test_defaults_stay_for_unnamed_states(self, tmp_path: Path) -> None:
        """A rule leaves [retention] itself untouched: its values remain the fall-back for unnamed states."""
        path = toml(
            tmp_path,
            '[retention]\nfailed = "3d"\n[[retention.rules]]\nqueues = ["a"]\nfinished = "0s"\n',
        )
        retention = load_settings(config_path=path, env={}).retention
        assert (retention.finished, retention.failed) == (86_400, 259_200)
        assert retention.rules[0].ages == {"finished": 0}


class TestPasswords:
    """Passwords: sources, password_file, and never in an error or in render_settings."""

    def test_password_file(self, tmp_path: Path) -> None:
        """password_file is read at load, trailing newline dropped; both keys keep their source."""
        secret = tmp_path / "redis-pw"
        secret.write_text(PW + "\n", encoding="utf-8")
        path = toml(tmp_path, f'[redis]\npassword_file = "{secret}"\n')
        settings = load_settings(config_path=path, env={})
        assert settings.redis.password is not None
        assert settings.redis.password.reveal() == PW
        assert settings.redis.password_file == str(secret)
        assert settings.sources["redis.password"] == f"file {path}"

    def test_env_password_file(self, tmp_path: Path) -> None:
        """JANITOR_REDIS_PASSWORD_FILE beats a password in the TOML file, which it replaces."""
        secret = tmp_path / "redis-pw"
        secret.write_text("from-env-file\r\n", encoding="utf-8")
        path = toml(tmp_path, f'[redis]\npassword = "{PW}"\n')
        settings = load_settings(
            config_path=path, env={"JANITOR_REDIS_PASSWORD_FILE": str(secret)}
        )
        assert settings.redis.password is not None
        assert settings.redis.password.reveal() == "from-env-file"
        assert settings.sources["redis.password"] == "env JANITOR_REDIS_PASSWORD_FILE"

    def test_env_password_beats_file_password_file(self, tmp_path: Path) -> None:
        """JANITOR_REDIS_PASSWORD beats [redis] password_file, which is then not read at all."""
        path = toml(tmp_path, f'[redis]\npassword_file = "{tmp_path / "absent"}"\n')
        settings = load_settings(config_path=path, env={"JANITOR_REDIS_PASSWORD": PW})
        assert settings.redis.password is not None
        assert settings.redis.password.reveal() == PW
        assert settings.redis.password_file is None

    def test_unreadable_password_file(self, tmp_path: Path) -> None:
        """A missing password file raises ConfigError naming the key and the path."""
        missing = str(tmp_path / "absent")
        path = toml(tmp_path, f'[redis]\npassword_file = "{missing}"\n')
        with pytest.raises(ConfigError) as err:
            load_settings(config_path=path, env={})
        assert str(err.value).startswith(f"{path}: [redis] password_file: cannot read")
        assert missing in str(err.value)
        with pytest.raises(
            ConfigError, match=r"^env JANITOR_REDIS_PASSWORD_FILE: cannot read"
        ):
            load_settings(env={"JANITOR_REDIS_PASSWORD_FILE": missing})

    def test_empty_password_file(self, tmp_path: Path) -> None:
        """An empty password file is an error, not an empty password."""
        secret = tmp_path / "empty"
        secret.write_text("\n", encoding="utf-8")
        with pytest.raises(ConfigError, match="is empty"):
            load_settings(env={"JANITOR_REDIS_PASSWORD_FILE": str(secret)})

    def test_both_at_one_level(self, tmp_path: Path) -> None:
        """Setting password and password_file in the same source is an error that names both, not the value."""
        path = toml(tmp_path, f'[redis]\npassword = "{PW}"\npassword_file = "/x"\n')
        with pytest.raises(ConfigError) as err:
            load_settings(config_path=path, env={})
        message = str(err.value)
        assert "[redis] password and" in message
        assert "[redis] password_file are both set" in message
        assert PW not in message

    @pytest.mark.parametrize(
        "text",
        [
            f'[redis]\npassword = ["{PW}"]\n',
            f'[redis]\npassword = {{ value = "{PW}" }}\n',
            f'[redis]\nurl = "http://:{PW}@host:6379/0"\n',
            f'[redis]\nurl = "redis://host:x/0?password={PW}"\n',
            f'[redis]\nurl = "ftp://user:{PW}@h"\npassword = "{PW}"\n',
            f'[redis]\npassword = "{PW}"\n[retention]\nfaild = 1\n',
            f'redis = ["redis://:{PW}@h:6379/0"]\n',
        ],
    )
    def test_never_in_file_errors(self, tmp_path: Path, text: str) -> None:
        """Errors about passwords or password-bearing URLs never contain the password."""
        message = error_of(tmp_path, text)
        assert PW not in message

    def test_never_in_env_or_flag_errors(self) -> None:
        """A bad URL in the env or a flag is shown redacted."""
        with pytest.raises(ConfigError) as err:
            load_settings(env={"JANITOR_REDIS_URL": f"http://u:{PW}@h"})
        assert PW not in str(err.value)
        assert "u:***@h" in str(err.value)
        with pytest.raises(ConfigError) as err:
            load_settings(env={}, redis_url=f"redis://:{PW}@h:port")
        assert PW not in str(err.value)

    def test_secret_repr(self, tmp_path: Path) -> None:
        """The loaded settings' repr never contains the password."""
        settings = load_settings(env={"JANITOR_REDIS_PASSWORD": PW})
        assert PW not in repr(settings)


class TestRedactUrl:
    """The redact_url function hides userinfo passwords and password= query parameters."""

    @pytest.mark.parametrize(
        ("url", "shown"),
        [
            ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
            ("redis://user:pw@host:6379/0", "redis://user:***@host:6379/0"),
            ("rediss://user:p%40ss@host/1", "rediss://user:***@host/1"),
            (
                "redis://host/0?password=pw&ssl_cert_reqs=none",
                "redis://host/0?password=***&ssl_cert_reqs=none",
            ),
            (
                "unix:///tmp/redis.sock?db=1&password=pw",
                "unix:///tmp/redis.sock?db=1&password=***",
            ),
            ("unix://:pw@/tmp/redis.sock", "unix://:***@/tmp/redis.sock"),
            ("redis://host:6379/0", "redis://host:6379/0"),
            ("redis://user@host:6379/0", "redis://user@host:6379/0"),
            ("redis://:p@ss/w@host/0", "redis://:***@host/0"),
        ],
    )
    def test_examples(self, url: str, shown: str) -> None:
        """Passwords become ***, everything else stays."""
        assert redact_url(url) == shown

    @given(st.text(min_size=4))
    def test_password_never_survives(self, pw: str) -> None:
        """Whatever the password's characters, it is gone from userinfo and query.

        In a query, a raw ``&`` ends the value (as redis-py parses it), so the query
        case draws passwords without one.
        """
        assume(pw not in "redis://user:***@host:6379/0?db=0&password=***&ssl=1")
        assert pw not in redact_url(f"redis://user:{pw}@host:6379/0")
        assert pw not in redact_url(f"unix://:{pw}@/tmp/redis.sock?db=0")
        query = pw.replace("&", "")
        assume(len(query) >= 4 and query not in "redis://h/0?db=0&password=***&ssl=1")
        assert query not in redact_url(f"redis://h/0?db=0&password={query}&ssl=1")


class TestRender:
    """render_settings: every value with its source, secrets redacted."""

    def test_sections_values_and_sources(self, tmp_path: Path) -> None:
        """Every section is printed with values, durations as text, and the source of each."""
        path = toml(
            tmp_path,
            '[retention]\nfailed = "7d"\n[[retention.rules]]\nqueues = ["job_queue_resource_id-*"]\n'
            'finished = "1h"\nkeep_last = 5\n',
        )
        text = render_settings(
            load_settings(config_path=path, env={}, log_format="json")
        )
        for section in SECTIONS:
            assert f"\n[{section}]\n" in text
        assert f'failed = "7d"  # file {path}\n' in text
        assert 'finished = "1d"  # default\n' in text
        assert 'log_format = "json"  # flag --log-format\n' in text
        assert f"[[retention.rules]]  # retention.rules[0], file {path}\n" in text
        assert (
            'queues = ["job_queue_resource_id-*"]\nfinished = "1h"\nkeep_last = 5\n'
            in text
        )
        assert 'sweep_orphans = "0 3 * * *"  # default\n' in text
        assert "# sentinel_master = (unset)  # default\n" in text
        assert f"# config file: {path}  (flag --config)\n" in text

    def test_secrets_redacted(self, tmp_path: Path) -> None:
        """Neither the password nor a password inside the URL appears; the URL shows ***."""
        secret = tmp_path / "pw"
        secret.write_text(PW, encoding="utf-8")
        settings = load_settings(
            env={
                "JANITOR_REDIS_URL": f"redis://admin:{PW}@h:6379/0?password={PW}",
                "JANITOR_REDIS_PASSWORD_FILE": str(secret),
            }
        )
        text = render_settings(settings)
        assert PW not in text
        assert 'password = "<redacted>"  # env JANITOR_REDIS_PASSWORD_FILE\n' in text
        assert 'url = "redis://admin:***@h:6379/0?password=***"' in text

    def test_no_rules_line(self) -> None:
        """Without rules the output says so."""
        assert "# [[retention.rules]]: none  # default\n" in render_settings(
            load_settings(env={})
        )


class TestExampleFiles:
    """The example configs in config/ are valid and complete."""

    def test_janitor_toml_is_the_defaults(self) -> None:
        """config/janitor.toml loads and sets exactly the built-in defaults."""
        path = str(ROOT / "config" / "janitor.toml")
        loaded, defaults = (
            load_settings(config_path=path, env={}),
            load_settings(env={}),
        )
        for section in (*SECTIONS, "log_format"):
            assert getattr(loaded, section) == getattr(defaults, section), section

    def test_janitor_toml_names_every_key(self) -> None:
        """Every key load_settings accepts appears in config/janitor.toml, set or commented."""
        text = (ROOT / "config" / "janitor.toml").read_text(encoding="utf-8")
        from janitor.config.settings import _SCHEMA

        for section, keys in _SCHEMA.items():
            assert re.search(rf"^#? ?\[{section}\]", text, re.MULTILINE), section
            for key in keys:
                if key == "rules":
                    assert "[[retention.rules]]" in text
                    continue
                assert re.search(rf"^#? ?{key} = ", text, re.MULTILINE), (
                    f"{section}.{key}"
                )

    def test_actinia_sidecar_toml(self) -> None:
        """config/actinia-sidecar.toml loads with an actinia INI and scopes the janitor to actinia's queues."""
        path = str(ROOT / "config" / "actinia-sidecar.toml")
        ini = str(DATA / "actinia-kvdb.ini")
        settings = load_settings(config_path=path, env={"JANITOR_ACTINIA_CONFIG": ini})
        assert settings.redis.url == "redis://valkey-queue:6377/0"
        assert settings.rq.queues == ("job_queue_*",)
        assert settings.retention.rules[0].queues == ("job_queue_resource_id-*",)
        assert settings.abandoned.action == "fail"

    def test_actinia_sidecar_toml_names_default_ini(self) -> None:
        """Without an override, the sidecar example points at actinia's default config path."""
        if Path("/etc/default/actinia").exists():
            pytest.skip("this machine has an actinia config")
        path = str(ROOT / "config" / "actinia-sidecar.toml")
        with pytest.raises(ConfigError, match="/etc/default/actinia") as err:
            load_settings(config_path=path, env={})
        assert str(err.value).startswith(f"{path}: [actinia] config: ")


class TestQueues:
    """``[queues] prune_after``."""

    @pytest.mark.parametrize(
        ("text", "seconds"),
        [("", 3600), ('prune_after = "10m"', 600), ('prune_after = "0s"', 0)],
    )
    def test_prune_after_is_a_duration_zero_allowed(
        self, tmp_path: Path, text: str, seconds: int
    ) -> None:
        """prune_after defaults to an hour, takes any duration, and "0s" too."""
        settings = load_settings(
            config_path=toml(tmp_path, f"[queues]\n{text}\n"), env={}
        )
        assert settings.queues.prune_after == seconds

    def test_janitor_config_shows_it(self, tmp_path: Path) -> None:
        """Janitor config prints [queues] prune_after as a duration, with its source."""
        path = toml(tmp_path, '[queues]\nprune_after = "10m"\n')
        text = render_settings(load_settings(config_path=path, env={}))
        assert '[queues]\nprune_after = "10m"  # ' in text


class TestMemoryBudget:
    """``[memory] budget`` and ``keep_for``."""

    @pytest.mark.parametrize(
        ("text", "parsed", "shown"),
        [
            ("80%", ("percent", 80.0), "80%"),
            ("512MB", ("bytes", 512 * 1024**2), "512MB"),
            ("2gb", ("bytes", 2 * 1024**3), "2GB"),
            ("1.5GB", ("bytes", 1.5 * 1024**3), "1536MB"),
        ],
    )
    def test_budget_is_a_share_or_a_size(
        self, tmp_path: Path, text: str, parsed: tuple[str, float], shown: str
    ) -> None:
        """A budget is a percent of maxmemory or a size; janitor config prints it back."""
        path = toml(tmp_path, f'[memory]\nbudget = "{text}"\nkeep_for = "5m"\n')
        settings = load_settings(config_path=path, env={})
        assert settings.memory.budget == parsed
        assert settings.memory.keep_for == 300
        assert f'budget = "{shown}"' in render_settings(settings)

    def test_no_budget_by_default(self) -> None:
        """Unset, there is no budget; keep_for defaults to ten minutes."""
        settings = load_settings(env={})
        assert settings.memory.budget is None
        assert settings.memory.keep_for == 600
