"""Task ``expire_jobs``: delete terminal jobs past their retention, completely.

``planner`` plans the reference way (read, judge by ``janitor.expiry``, delete with
re-checks); ``fast`` hands the plain cases to one Lua script per page, which judges them by
the same rule and deletes them in the same atomic step; ``registry`` is what both walk.
"""

from janitor.tasks.expire_jobs.planner import NAME, ExpireJobs

__all__ = ["NAME", "ExpireJobs"]
