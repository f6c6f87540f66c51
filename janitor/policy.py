"""Retention policy: which rule keeps a terminal job how long, and which queues may be written."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from janitor.config import RetentionSettings, RqSettings


@dataclass(frozen=True, slots=True)
class Retention:
    """The retention that applies to one queue and state, and the names of the rules that set it."""

    max_age_s: int
    age_rule: str
    """Config path of the age rule, e.g. ``retention.rules[0].finished``."""
    keep_last: int | None
    cap_rule: str | None
    """Config path of the keep_last cap, when there is one."""


def retention_for(settings: RetentionSettings, queue: str, state: str) -> Retention:
    """Return the retention for ``state`` jobs of ``queue``.

    The first ``[[retention.rules]]`` entry whose globs match the queue wins; the states
    (and ``keep_last``) it does not name take the ``[retention]`` values, never a later
    rule's.
    """
    for rule in settings.rules:
        if any(fnmatchcase(queue, pattern) for pattern in rule.queues):
            base = f"retention.rules[{rule.index}]"
            if state in rule.ages:
                age, age_rule = rule.ages[state], f"{base}.{state}"
            else:
                age, age_rule = settings.age_for(state), f"retention.{state}"
            if rule.keep_last is not None:
                return Retention(age, age_rule, rule.keep_last, f"{base}.keep_last")
            return _with_default_cap(settings, age, age_rule)
    return _with_default_cap(settings, settings.age_for(state), f"retention.{state}")


def _with_default_cap(
    settings: RetentionSettings, age: int, age_rule: str
) -> Retention:
    cap_rule = "retention.keep_last" if settings.keep_last is not None else None
    return Retention(age, age_rule, settings.keep_last, cap_rule)


@dataclass(frozen=True, slots=True)
class QueueFilter:
    """Decides whether the janitor may write to a queue: ``[rq] queues`` and ``--queue`` globs."""

    allow: tuple[str, ...]
    only: tuple[str, ...] = ()

    @classmethod
    def build(cls, rq: RqSettings, only: Sequence[str] = ()) -> QueueFilter:
        """Combine the config allowlist with the command line's ``--queue`` globs."""
        return cls(tuple(rq.queues), tuple(only))

    def __call__(self, queue: str) -> bool:
        """Whether ``queue`` matches the allowlist and, if given, a ``--queue`` glob."""
        if not any(fnmatchcase(queue, pattern) for pattern in self.allow):
            return False
        return not self.only or any(
            fnmatchcase(queue, pattern) for pattern in self.only
        )
