"""``janitor report`` and ``janitor explain``: read-only answers to "when does a job get deleted?".

``build`` assembles the report from ``read`` (bounded reads of queues and jobs),
``queues`` (per queue and state), ``leaks``, ``memory`` and ``doctor`` (risky settings);
``explain`` answers for one job; ``text`` renders both for a terminal. The JSON shapes
are in docs/report.md.
"""

from janitor.report.build import build_report
from janitor.report.explain import explain
from janitor.report.text import render_explain, render_report

__all__ = ["build_report", "explain", "render_explain", "render_report"]
