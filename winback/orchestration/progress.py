"""Progress a person can watch: the loader per file, the sync per channel, a DAG per task.

Every line goes to the `winback.progress` logger, so the same text appears on the command
line (`winback load`, `winback sync`), in an Airflow task's log, and, passed through by
`DagTestProgress`, in `make demo`'s output. Lines hold counts, names of files, channels
and providers, rates and durations: never a customer, an address or a message.

Before a live sync sends anything, `log_send_capacity` states for each provider the
messages due, the rate and concurrency its connection allows, and the time that implies,
and warns when that is longer than the send window: the fix is the connection's
`requests_per_second` / `max_concurrency`, set to what the provider allows
(docs/providers.md).
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

log = logging.getLogger("winback.progress")

# A long task reports at most this often (and always when it ends).
REPORT_EVERY_SECONDS = 5.0


def duration(seconds: float) -> str:
    """`0.4 s`, `12 s`, `2 min 39 s`, `1 h 23 min`: short and exact enough to plan by."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s"


# --------------------------------------------------------------------------- loader


def file_loaded(index: int, total: int, report) -> None:
    """Landing file `index` of `total` is in: `load 3/8 2026-11-20/orders.csv: ...`.

    `report` is the loader's FileReport (source_file, rows_read, rows_loaded,
    rows_quarantined, seconds): counts only, never a row.
    """
    log.info(
        "load %d/%d %s: %s rows read, %s loaded, %s quarantined in %s",
        index,
        total,
        report.source_file,
        f"{report.rows_read:,}",
        f"{report.rows_loaded:,}",
        f"{report.rows_quarantined:,}",
        duration(report.seconds),
    )


# --------------------------------------------------------------------------- sync


@dataclass(frozen=True)
class SendPlan:
    """What one provider is about to send, and the limits its connection sets."""

    provider: str
    channel: str
    due: int
    requests_per_second: float
    max_concurrency: int

    @property
    def seconds_at_rate(self) -> float:
        """The least time the rate allows: one request per message, none retried."""
        return self.due / self.requests_per_second if self.requests_per_second > 0 else 0.0


def send_plans(providers: dict, rows_by_channel: dict[str, list]) -> list[SendPlan]:
    """A plan per channel that has a provider (`.name`, `.limits`): its rows due today,
    retries and rows to reconcile included (a few may still be skipped for consent)."""
    return [
        SendPlan(
            provider.name,
            channel,
            len(rows),
            provider.limits.requests_per_second,
            provider.limits.max_concurrency,
        )
        for channel, rows in sorted(rows_by_channel.items())
        if (provider := providers.get(channel)) is not None
    ]


def log_send_capacity(plans: Iterable[SendPlan], send_window_hours: float) -> list[SendPlan]:
    """Log, per provider, messages due, rate, concurrency and the time they imply; warn
    when a provider's share of the day cannot go out within the send window.

    Returns the plans that do not fit the window.
    """
    too_slow = []
    for plan in plans:
        if plan.due == 0:
            continue
        log.info(
            "send capacity %s (%s): %s messages due at %g/s, %d at once: at least %s",
            plan.provider,
            plan.channel,
            f"{plan.due:,}",
            plan.requests_per_second,
            plan.max_concurrency,
            duration(plan.seconds_at_rate),
        )
        if plan.seconds_at_rate > send_window_hours * 3600:
            too_slow.append(plan)
            log.warning(
                "send capacity %s (%s): %s messages at %g/s take %s, longer than the %g h "
                "send window; raise requests_per_second (and max_concurrency) on its "
                "connection to what the provider allows, see docs/providers.md",
                plan.provider,
                plan.channel,
                f"{plan.due:,}",
                plan.requests_per_second,
                duration(plan.seconds_at_rate),
                send_window_hours,
            )
    return too_slow


def log_audience_changes(provider: str, changes: int, limits) -> None:
    """An audience provider's changes due (adds and removes) and the limits it is sent
    with; batched providers need far fewer requests than changes, so no time is implied."""
    log.info(
        "audience %s: %s member changes due, at most %g requests/s, %d at once",
        provider,
        f"{changes:,}",
        limits.requests_per_second,
        limits.max_concurrency,
    )


@dataclass
class SendProgress:
    """Outcomes of one channel's sync as they come: count, rate, time left.

    `record(status)` after each row; a line at most every `every` seconds, and one at
    `finish()`.
    """

    provider: str
    channel: str
    total: int
    requests_per_second: float | None = None
    every: float = REPORT_EVERY_SECONDS
    clock: Callable[[], float] = time.monotonic
    statuses: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.started = self.clock()
        self._last_report = self.started

    @classmethod
    def of(cls, provider, rows: list[dict], total: int) -> SendProgress:
        """For a message provider (`.name`, `.limits`) and its channel's outbox rows."""
        channel = rows[0]["channel"] if rows else "?"
        return cls(provider.name, channel, total, provider.limits.requests_per_second)

    @property
    def done(self) -> int:
        return sum(self.statuses.values())

    def record(self, status: str) -> None:
        self.statuses[status] += 1
        now = self.clock()
        if now - self._last_report >= self.every and self.done < self.total:
            self._last_report = now
            self._report(now, final=False)

    def finish(self) -> None:
        self._report(self.clock(), final=True)

    def _report(self, now: float, final: bool) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        outcomes = ", ".join(f"{status} {n:,}" for status, n in sorted(self.statuses.items()))
        if final:
            note = ""
            if self.requests_per_second and self.done and rate < 0.8 * self.requests_per_second:
                note = (
                    f" (below the configured {self.requests_per_second:g}/s: retries, "
                    "Retry-After pauses or max_concurrency held it back)"
                )
            log.info(
                "sync %s via %s: done, %s of %s in %s, %.1f/s%s; %s",
                self.channel,
                self.provider,
                f"{self.done:,}",
                f"{self.total:,}",
                duration(elapsed),
                rate,
                note,
                outcomes or "nothing to send",
            )
            return
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        log.info(
            "sync %s via %s: %s of %s (%d%%) in %s, %.1f/s, about %s left; %s",
            self.channel,
            self.provider,
            f"{self.done:,}",
            f"{self.total:,}",
            100 * self.done // max(self.total, 1),
            duration(elapsed),
            rate,
            duration(left) if left != float("inf") else "?",
            outcomes,
        )


# --------------------------------------------------------------------------- a DAG run

_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z?)\s")
_TASK_EDGE = re.compile(r"\[DAG TEST\] (starting|end task) task_id=(\S+)")
_TASK_INSTANCE = re.compile(r"<TaskInstance: ([^.\s]+)\.\S+ (\S+) \[")
_NEW_STATE = re.compile(r"Task instance state updated .*new_state=(\w+)")
_PROGRESS_LINE = re.compile(r"\[(\w+)\s*\]\s+(.*?)\s+\[" + re.escape(log.name) + r"\]")
# A dbt build's line for a node it finished, as cosmos' watcher producer logs it:
# `12:00:01  5 of 116 OK created sql view model staging.x ..... [CREATE VIEW in 1.86s]`.
_DBT_NODE_DONE = re.compile(
    r"\d\d:\d\d:\d\d\s+(\d+) of (\d+) (OK|PASS|WARN|ERROR|FAIL|SKIP)\b"
    r"\s*(.*?)\s*\.*\s*\[(.*?)\]\s+\[cosmos"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _log_time(line: str) -> float | None:
    match = _LOG_TIME.match(line)
    if not match:
        return None
    try:
        return datetime.fromisoformat(match.group(1).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass
class TaskDone:
    index: int
    total: int | None
    task_id: str
    seconds: float
    state: str


class DagTestProgress:
    """Reads `airflow dags test` output line by line and reports what it shows.

    Each task that ends becomes `[n/N] task_id  seconds` (N from `count_tasks(dag_id,
    run_id)`, asked once the run exists; None leaves it out), and the tasks' own
    `winback.progress` lines are passed on, as are the nodes a dbt build finishes (all
    but passing tests). `say` prints a line; `done` collects the finished tasks for a
    summary.
    """

    def __init__(
        self,
        say: Callable[[str], None],
        count_tasks: Callable[[str, str], int | None] | None = None,
        indent: str = "      ",
    ):
        self.say = say
        self.count_tasks = count_tasks
        self.indent = indent
        self.total: int | None = None
        self.done: list[TaskDone] = []
        self._started: dict[str, float] = {}
        self._state: dict[str, str] = {}
        self._current: str | None = None
        self._asked = False

    def feed(self, line: str) -> None:
        stamp = _log_time(line)
        edge = _TASK_EDGE.search(line)
        if edge:
            kind, task_id = edge.groups()
            when = stamp if stamp is not None else time.time()
            if kind == "starting":
                self._started[task_id] = when
                self._current = task_id
            else:
                self._finish(task_id, when)
            return
        if not self._asked and self.count_tasks is not None:
            instance = _TASK_INSTANCE.search(line)
            if instance:
                self._asked = True
                try:
                    self.total = self.count_tasks(*instance.groups())
                except Exception:  # noqa: BLE001  a count is a nicety: go on without it
                    self.total = None
        state = _NEW_STATE.search(line)
        if state and self._current and state.group(1) != "running":
            self._state[self._current] = state.group(1)
        progress = _PROGRESS_LINE.search(line)
        if progress:
            level, text = progress.groups()
            prefix = "" if level == "info" else f"{level}: "
            self.say(f"{self.indent}    {prefix}{text}")
            return
        node = _DBT_NODE_DONE.search(_ANSI.sub("", line))
        # A dbt build (one task for a whole group) shows each model as dbt finishes it;
        # passing tests stay in the log, any other test result is shown.
        if node and node.group(3) != "PASS":
            number, total, status, what, result = node.groups()
            self.say(f"{self.indent}    dbt {number}/{total} {status} {what} [{result}]")

    def _finish(self, task_id: str, when: float) -> None:
        seconds = max(0.0, when - self._started.pop(task_id, when))
        state = self._state.pop(task_id, "success")
        task = TaskDone(len(self.done) + 1, self.total, task_id, seconds, state)
        self.done.append(task)
        width = len(str(self.total or 0))
        counter = f"{task.index:>{width}}/{self.total}" if self.total else f"{task.index}"
        flag = "" if state == "success" else f"  {state.upper()}"
        self.say(f"{self.indent}[{counter}] {task_id:<52} {duration(seconds):>9}{flag}")

    def slowest(self, n: int = 3) -> list[TaskDone]:
        return sorted(self.done, key=lambda t: -t.seconds)[:n]


# --------------------------------------------------------------------------- stages


class StageClock:
    """Wall-clock per named stage of a long command (the demo): `with clock.stage(name):`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.started = clock()
        self.seconds: dict[str, float] = {}

    def stage(self, name: str):
        return _Stage(self, name)

    @property
    def total(self) -> float:
        return self.clock() - self.started

    def table(self) -> str:
        width = max((len(name) for name in self.seconds), default=5)
        lines = [f"{name:<{width}}  {duration(s):>10}" for name, s in self.seconds.items()]
        lines.append(f"{'total':<{width}}  {duration(self.total):>10}")
        return "\n".join(lines)


class _Stage:
    def __init__(self, clock: StageClock, name: str):
        self.clock, self.name = clock, name

    def __enter__(self):
        self.started = self.clock.clock()
        return self

    def __exit__(self, *exc) -> None:
        elapsed = self.clock.clock() - self.started
        self.clock.seconds[self.name] = self.clock.seconds.get(self.name, 0.0) + elapsed
