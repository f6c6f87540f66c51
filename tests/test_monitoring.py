"""The operators' artifacts: alert rules pass promtool, and every metric they and the dashboard use exists."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from janitor.config.settings import TASK_NAMES
from tests.cli import daemon
from tests.servers import RedisServer, free_port

RULES = Path("deploy/prometheus/rq-janitor.rules.yml")
RULE_TESTS = Path("deploy/prometheus/rq-janitor.tests.yml")
DASHBOARD = Path("deploy/grafana/rq-janitor.json")
NAME = re.compile(r"\bjanitor_[a-z_]+\b")
PROMTOOL = shutil.which("promtool")


def rule_exprs(repo_root: Path) -> list[str]:
    """The PromQL of every alert rule."""
    doc = yaml.safe_load((repo_root / RULES).read_text(encoding="utf-8"))
    return [rule["expr"] for group in doc["groups"] for rule in group["rules"]]


def dashboard(repo_root: Path) -> dict[str, Any]:
    """The Grafana dashboard, parsed."""
    return dict(json.loads((repo_root / DASHBOARD).read_text(encoding="utf-8")))


def dashboard_exprs(repo_root: Path) -> list[str]:
    """The PromQL of every dashboard target."""
    return [t["expr"] for p in dashboard(repo_root)["panels"] for t in p["targets"]]


def unknown_metrics(exprs: list[str], exposed: set[str]) -> set[str]:
    """The janitor metric names the expressions use that the daemon does not expose."""
    return {name for expr in exprs for name in NAME.findall(expr)} - exposed


def anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = heading.lstrip("#").strip().lower()
    return re.sub(r"[^a-z0-9 _-]", "", text).replace(" ", "-")


def exposed_names(metrics: str) -> set[str]:
    """Every sample and family name in Prometheus text."""
    names = set()
    for line in metrics.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


@pytest.mark.skipif(
    PROMTOOL is None, reason="no promtool (Debian's prometheus package)"
)
def test_rules_pass_promtool(repo_root: Path) -> None:
    """The rules pass `promtool check rules` and their unit tests (a counter reset and a follower replica among them)."""
    assert PROMTOOL is not None
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [PROMTOOL, "test", "rules", RULE_TESTS.name],
        cwd=repo_root / RULE_TESTS.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_for_severity_and_runbook(repo_root: Path) -> None:
    """Each alert waits (for:), has a severity label and a runbook pointing at a README section that exists."""
    doc = yaml.safe_load((repo_root / RULES).read_text(encoding="utf-8"))
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    anchors = {anchor(line) for line in readme.splitlines() if line.startswith("#")}
    for group in doc["groups"]:
        for rule in group["rules"]:
            assert rule["for"], rule["alert"]
            assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
            runbook = rule["annotations"]["runbook_url"]
            assert runbook.startswith("README.md#"), rule["alert"]
            assert runbook.split("#", 1)[1] in anchors, (rule["alert"], runbook)


def test_dashboard_is_importable_json_with_a_datasource_variable(
    repo_root: Path,
) -> None:
    """The dashboard has a Prometheus datasource variable every target uses, unique panel ids, and the panels operators need."""
    board = dashboard(repo_root)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for p in board["panels"]:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        for target in p["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert target["expr"]
    used = {name for expr in dashboard_exprs(repo_root) for name in NAME.findall(expr)}
    assert used >= {
        "janitor_leader",
        "janitor_task_runs_total",
        "janitor_actions_total",
        "janitor_task_duration_seconds_bucket",
        "janitor_task_last_success_timestamp_seconds",
        "janitor_task_interval_seconds",
        "janitor_backlog_oldest_age_seconds",
    }


def test_a_renamed_metric_is_caught() -> None:
    """The name check flags a metric the daemon does not expose (a rename in the rules fails the suite)."""
    exposed = {"janitor_leader", "janitor_task_runs_total"}
    exprs = ["sum(janitor_leader)", "increase(janitor_task_run_total[5m])"]
    assert unknown_metrics(exprs, exposed) == {"janitor_task_run_total"}


def test_every_metric_used_exists_on_a_daemon_that_ran_every_task(
    redis_server: RedisServer, tmp_path: Path, repo_root: Path
) -> None:
    """A real daemon that ran every task once exposes every janitor metric the rules and the dashboard use."""
    port = free_port()
    config = tmp_path / "janitor.toml"
    schedule = "".join(f'{task} = "every 1s"\n' for task in TASK_NAMES)
    config.write_text(
        f'[redis]\nurl = "{redis_server.url}"\n[http]\nlisten = "127.0.0.1:{port}"\n'
        f'[memory]\nbudget = "1GB"\n[schedule]\n{schedule}memory = "every 1s"\n'
        f'[audit]\npath = "{tmp_path / "audit.jsonl"}"\n',
        encoding="utf-8",
    )
    process = daemon(config, tmp_path / "daemon.stderr")
    try:
        metrics = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/metrics", timeout=5
                ) as answer:
                    metrics = answer.read().decode()
            except OSError:
                metrics = ""
            ran = all(
                f'janitor_task_runs_total{{outcome="ok",task="{task}"}} 0.0'
                not in metrics
                and f'task="{task}"' in metrics
                for task in TASK_NAMES
            )
            if ran and "janitor_redis_used_memory_bytes " in metrics:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the daemon did not run every task: {metrics[-2000:]}")
    finally:
        process.terminate()
        process.wait(timeout=15)
    exposed = exposed_names(metrics)
    assert unknown_metrics(rule_exprs(repo_root), exposed) == set()
    assert unknown_metrics(dashboard_exprs(repo_root), exposed) == set()
