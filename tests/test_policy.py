"""Retention rules: which rule decides, and the queue allowlist."""

from __future__ import annotations

from janitor.config import RetentionRule, RetentionSettings, RqSettings
from janitor.policy import QueueFilter, retention_for

RULES = (
    RetentionRule(
        index=0,
        queues=("job_queue_resource_id-*",),
        ages={"finished": 3600},
        keep_last=10,
    ),
    RetentionRule(index=1, queues=("job_queue_*",), ages={"failed": 60}),
)
SETTINGS = RetentionSettings(finished=86_400, failed=2_592_000, rules=RULES)


def test_first_matching_rule_wins_without_fall_through() -> None:
    """A queue matched by rule 0 takes rule 0's finished age and [retention]'s failed age, never rule 1's."""
    finished = retention_for(SETTINGS, "job_queue_resource_id-1", "finished")
    failed = retention_for(SETTINGS, "job_queue_resource_id-1", "failed")
    assert (finished.max_age_s, finished.age_rule) == (
        3600,
        "retention.rules[0].finished",
    )
    assert (failed.max_age_s, failed.age_rule) == (2_592_000, "retention.failed")
    assert (failed.keep_last, failed.cap_rule) == (10, "retention.rules[0].keep_last")


def test_later_rule_and_default() -> None:
    """Other queues fall to the next matching rule, then to [retention]."""
    assert (
        retention_for(SETTINGS, "job_queue_x", "failed").age_rule
        == "retention.rules[1].failed"
    )
    default = retention_for(SETTINGS, "other", "finished")
    assert (default.max_age_s, default.age_rule, default.keep_last) == (
        86_400,
        "retention.finished",
        None,
    )


def test_default_keep_last_applies_where_no_rule_sets_one() -> None:
    """[retention] keep_last caps queues whose rule does not set its own."""
    settings = RetentionSettings(keep_last=5, rules=RULES)
    assert (
        retention_for(settings, "job_queue_x", "finished").cap_rule
        == "retention.keep_last"
    )
    assert (
        retention_for(settings, "job_queue_resource_id-1", "finished").keep_last == 10
    )


def test_queue_filter_intersects_allowlist_and_command_line() -> None:
    """--queue globs narrow [rq] queues and never widen them."""
    allow = QueueFilter.build(RqSettings(queues=("job_queue_*",)), ["*-1"])
    assert allow("job_queue_resource_id-1")
    assert not allow("job_queue_resource_id-2")
    assert not allow("other-1")
    assert QueueFilter.build(RqSettings())("anything")
