"""Render the report and explain JSON objects as plain text tables for a terminal.

Works only from the documented JSON (docs/report.md), so the text never shows anything
the JSON does not, and neither can show a payload.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

_ONE_DECIMAL_BELOW = 10
_UNITS = (("y", 31_536_000), ("d", 86_400), ("h", 3_600), ("m", 60))
_HEADER = (
    "QUEUE",
    "STATE",
    "COUNT",
    "OLDEST",
    "RQ DELETES",
    "JANITOR DELETES",
    "BACKLOG",
)


def human(seconds: float | None) -> str:
    """A short duration: ``45s``, ``12m``, ``5h``, ``1.5d``, ``30d``, ``1y``."""
    if seconds is None:
        return "-"
    value = abs(seconds)
    for unit, size in _UNITS:
        if value >= size * 0.995:  # 1y even when a TTL has already run down a little
            amount = value / size
            if amount < _ONE_DECIMAL_BELOW:
                return f"{amount:.1f}".removesuffix(".0") + unit
            return f"{amount:.0f}{unit}"
    return f"{value:.0f}s"


def when(at: float | None, now: float) -> str:
    """A moment as UTC time plus how far from ``now``: ``2026-05-01 12:00:00 UTC (in 8m)``."""
    if at is None:
        return "never"
    stamp = dt.datetime.fromtimestamp(at, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    relative = f"in {human(at - now)}" if at >= now else f"{human(now - at)} ago"
    return f"{stamp} ({relative})"


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(width) for cell, width in zip(row, widths, strict=True)
        ).rstrip()
        for row in rows
    ]


def _rq_cell(rq: dict[str, Any], now: float) -> str:
    parts = []
    if rq["with_ttl"]:
        first, last = human(rq["first_at"] - now), human(rq["last_at"] - now)
        parts.append(f"in {first}" if first == last else f"in {first} to {last}")
    if rq["never"]:
        parts.append(f"{rq['never']} never")
    return "; ".join(parts) or "-"


def _state_row(queue: str, state: dict[str, Any], now: float) -> list[str]:
    backlog = state["backlog"]
    return [
        queue,
        state["state"],
        ("" if state["exact"] else "~") + str(state["count"]),
        human(state["oldest_age_s"]),
        _rq_cell(state["rq"], now),
        state["janitor"]["when"],
        f"{backlog['count']}, oldest {human(backlog['oldest_age_s'])}"
        if backlog["count"]
        else "-",
    ]


def render_report(report: dict[str, Any]) -> str:
    """The report as text: the state table, leaks, memory, findings and what was sampled."""
    now = report["generated_at"]
    server = report["server"]
    lines = [
        (
            f"rq-janitor report, {when(now, now).split(' (')[0]}, key prefix {report['key_prefix']!r}, "
            f"{server['flavour']} {server['version']} (read-only)"
        ),
        f"When is a job deleted? See {report['docs']} for every state and RQ version.",
        "",
    ]
    rows = [
        _state_row(
            queue["name"] if queue["listed"] else f"{queue['name']} (unlisted)",
            state,
            now,
        )
        for queue in report["queues"]
        for state in queue["states"]
    ]
    lines += _table([_HEADER, *rows]) if rows else ["no RQ queues found"]
    lines += [
        "",
        "RQ DELETES: when the jobs' keys expire (among the jobs read); ~ = estimated from a sample.",
    ]
    lines += _leak_lines(report["leaks"])
    lines += _rate_limit_lines(report["rate_limits"])
    lines += _memory_lines(report["memory"])
    lines += _finding_lines(report["findings"])
    lines += ["", _sampling_line(report["sampling"])]
    return "\n".join(lines)


def _leak_lines(leaks: Sequence[dict[str, Any]]) -> list[str]:
    found = [leak for leak in leaks if leak["count"]]
    if not found:
        return ["", "Leaks: none found."]
    lines = ["", "Leaks:"]
    for leak in found:
        approx = "" if leak["exact"] else " (at least; sampled)"
        examples = ", ".join(leak["examples"][:3])
        lines.append(f"  {leak['kind']}: {leak['count']}{approx}  e.g. {examples}")
        lines.append(f"    what to do: {leak['advice']}")
    return lines


def _rate_limit_lines(limits: dict[str, Any]) -> list[str]:
    if not limits["keys"]:
        return []
    lines = ["", f"Rate limits (RQ 3): {limits['count']}"]
    for limit in limits["keys"][:10]:
        waiting = f"{limit['waiting']} waiting"
        if limit["oldest_waiting_age_s"] is not None:
            waiting += f", the oldest for {human(limit['oldest_waiting_age_s'])}"
        flags = f", {limit['stale']} stale" if limit["stale"] else ""
        flags += ", STARVED" if limit["starved"] else ""
        lines.append(
            f"  {limit['key']}: {limit['allowed']}/{limit['concurrency']} slots held, {waiting}{flags}"
        )
    return lines


def _budget_line(budget: dict[str, Any]) -> list[str]:
    used = _bytes(budget["used_memory"])
    if budget.get("error"):
        return ["", f"Memory: used {used}; [memory] budget: {budget['error']}"]
    if budget["budget"] is None:
        return ["", f"Memory: used {used}; no [memory] budget"]
    line = f"Memory: used {used} of a {_bytes(budget['budget'])} budget"
    if budget["over"]:
        take = budget["would_take"]
        line += (
            f": OVER; expire_jobs would delete about {take['jobs']} terminal jobs "
            f"({_bytes(take['bytes'])}), oldest first"
        )
    return ["", line]


def _memory_lines(memory: dict[str, Any]) -> list[str]:
    budget = _budget_line(memory["budget"]) if "budget" in memory else []
    if not memory["available"]:
        return [*budget, "", "Memory: MEMORY USAGE is not available on this server."]
    return budget + _family_lines(memory)


def _family_lines(memory: dict[str, Any]) -> list[str]:
    rows = [
        [f["family"], str(f["queues"]), str(f["jobs"]), _bytes(f["bytes"])]
        for f in memory["families"]
    ]
    if not rows:
        return []
    lines = ["", "Memory per queue family (an estimate from sampled MEMORY USAGE):"]
    return lines + [
        "  " + line for line in _table([["FAMILY", "QUEUES", "JOBS", "BYTES"], *rows])
    ]


def _bytes(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _finding_lines(findings: Sequence[dict[str, Any]]) -> list[str]:
    if not findings:
        return ["", "Doctor: nothing risky found."]
    lines = ["", "Doctor:"]
    for finding in findings:
        lines.append(
            f"  [{finding['severity']}] {finding['code']}: {finding['message']}"
        )
        lines.append(f"    what to do: {finding['advice']}")
    return lines


def _sampling_line(sampling: dict[str, Any]) -> str:
    scan = sampling["scan"]
    scanned = f"SCAN saw {scan['keys_seen']} keys in {scan['calls']} call(s)" + (
        "" if scan["complete"] else f", stopped at {scan['max_calls']} calls"
    )
    if sampling["exact"]:
        return f"Read: every entry of every queue shown; {scanned}."
    return (
        f"Sampled: {sampling['queues_reported']} of {sampling['queues_matching']} queues shown, "
        f"at most {sampling['per_collection_max']} entries read per queue and registry "
        f"({sampling['read_budget']} in all), oldest and newest always included; {scanned}."
    )


def render_explain(data: dict[str, Any]) -> str:
    """One job's explanation as text."""
    now = data["now"]
    ttls, registry, results = data["ttls"], data["registry"], data["results"]
    allowed = "in [rq] queues" if data["allowed"] else "outside [rq] queues"
    stamps = [
        f"  {name.removesuffix('_at').replace('_', ' '):<15} {when(value, now)}"
        for name, value in data["timestamps"].items()
        if value is not None
    ]
    lines = [
        f"job {data['job_id']} ({data['key']})",
        f"  status          {data['status']}",
        f"  queue           {data['queue']} ({allowed})",
        *stamps,
        (
            f"  key TTL         {human(ttls['key_ttl_s']) if ttls['key_ttl_s'] is not None else 'none'}"
            f"  (result_ttl {_opt(ttls['result_ttl'])}, failure_ttl {_opt(ttls['failure_ttl'])}, ttl {_opt(ttls['ttl'])})"
        ),
        f"  registry        {registry['key'] or '-'}"
        + ("" if registry["member"] or not registry["key"] else " (not listed there)"),
        f"  result stream   {_stream(results)}",
        f"  dependents      {data['dependents']}",
    ]
    if data["worker"]["name"]:
        alive = "exists" if data["worker"]["exists"] else "gone"
        lines.append(f"  worker          {data['worker']['name']} ({alive})")
    if data["rule"]:
        rule = data["rule"]
        cap = (
            f", keep_last {rule['keep_last']} ({rule['cap_rule']})"
            if rule["keep_last"]
            else ""
        )
        lines.append(
            f"  rule            {rule['age_rule']} = {human(rule['retention_s'])}{cap}"
        )
        lines.append(f"                  why: {rule['why']}")
    jan = data["janitor"]
    schedule = f" (expire_jobs runs {jan['schedule']})" if jan["at"] is not None else ""
    lines += [
        "",
        f"RQ deletes it:          {_deletion(data['rq'], now)}",
        f"The janitor deletes it: {_deletion(jan, now)}{schedule}",
        f"First: {data['first'] or 'nobody'}. See {data['docs']}: when is a job deleted?",
    ]
    if data["memory"]["at_risk"]:
        lines.append(
            "At risk now: Redis is over [memory] budget, and expire_jobs deletes jobs "
            "like this one (older than [memory] keep_for) oldest first until it is under."
        )
    return "\n".join(lines)


def _deletion(decision: dict[str, Any], now: float) -> str:
    """``<time>: <reason>``, or just the reason when it says never or kept."""
    if decision["at"] is None:
        return str(decision["reason"])
    return f"{when(decision['at'], now)}: {decision['reason']}"


def _opt(value: int | None) -> str:
    return "default" if value is None else str(value)


def _stream(results: dict[str, Any]) -> str:
    if not results["exists"]:
        return "none"
    ttl = results["ttl_s"]
    return (
        f"{results['key']} (TTL {human(ttl)})"
        if ttl is not None
        else f"{results['key']} (no TTL)"
    )
