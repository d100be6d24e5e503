"""The cost budget: skip scheduled CAM runs that would push their share of the training wall time over
``max_overhead``, and measure that share (``cam_cost/overhead``).

The clock starts before the baseline run (at the start of training). A run is allowed when the time
spent in CAM runs so far plus one more run (as long as the latest one) stays within ``max_overhead`` of
the wall time elapsed plus that run. The baseline always runs: it is the reference every later run is
compared with, and it measures what a run costs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["CostBudget"]


class CostBudget:
    """Time spent in CAM runs against the wall time of training.

    Args:
        max_overhead: the largest share of the wall time the runs may take, in ``(0, 1]``, or ``None``
            (no limit; the share is still measured).
        clock: seconds as a float (``time.perf_counter``; tests pass a fake).

    Example:
        >>> now = [0.0]
        >>> budget = CostBudget(0.05, clock=lambda: now[0])
        >>> budget.start()
        >>> budget.record(1.0)                 # the baseline took 1 s
        >>> now[0] = 10.0                      # 10 s into training: a second run would make 2 s of 11 s
        >>> budget.allows(), round(budget.projected_share(), 3)
        (False, 0.182)
        >>> now[0] = 39.0                      # 2 s of 40 s is 5 %
        >>> budget.allows()
        True
    """

    def __init__(self, max_overhead: float | None, clock: Callable[[], float] = time.perf_counter) -> None:
        self.max_overhead = max_overhead
        self.clock = clock
        self.started: float | None = None
        self.spent = 0.0
        self.last = 0.0
        self.skipped = 0

    def start(self) -> None:
        """Start measuring (at the start of training); forgets earlier sessions."""
        self.started = self.clock()
        self.spent = self.last = 0.0
        self.skipped = 0

    def elapsed(self) -> float:
        """Wall time since :meth:`start` in seconds (0 before it)."""
        return 0.0 if self.started is None else max(self.clock() - self.started, 0.0)

    def projected_share(self) -> float:
        """The share the runs would take with one more run as long as the latest."""
        return (self.spent + self.last) / max(self.elapsed() + self.last, 1e-12)

    def allows(self) -> bool:
        """Whether a run fits the budget now (always when there is no limit or nothing ran yet)."""
        if self.max_overhead is None or self.started is None or self.spent == 0.0:
            return True
        return self.projected_share() <= self.max_overhead

    def record(self, seconds: float) -> None:
        """Count one run that took ``seconds``."""
        self.spent += seconds
        self.last = seconds

    def skip(self, step: int) -> str | None:
        """Count a run the budget does not allow; the words to warn with the first time (else ``None``)."""
        self.skipped += 1
        if self.skipped > 1:
            return None
        return (
            f"CAMCallback(max_overhead={self.max_overhead:g}): skipped the CAM run at global step {step}: the runs "
            f"so far took {self.spent:.1f} s of {self.elapsed():.1f} s of training ({self.share():.0%}), and one "
            f"more (~{self.last:.1f} s) would make it {self.projected_share():.0%}. Later runs go ahead whenever "
            "they fit; cam_cost/overhead logs the share. Further skips are not reported (see "
            "CAMCallback.skipped_runs)."
        )

    def share(self) -> float:
        """The share of the wall time spent in CAM runs so far, in ``[0, 1]``."""
        return min(self.spent / max(self.elapsed(), 1e-12), 1.0) if self.started is not None else 0.0
