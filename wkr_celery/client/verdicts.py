"""What a client does about what its watches see: the same decisions for both clients.

After each check of a Redis (once a second, :class:`~.restarts.RedisState`), a :class:`Judge`
turns what the check found into :class:`Verdict` s, which :class:`~.replies.Replies` (threads)
and :class:`~.async_replies.AsyncReplies` (an event loop) carry out on their own requests:

* a Redis restarted without persistence puts the requests published before the restart *in
  doubt* (:mod:`.doubt`); when it is the broker, the grace is read afresh from its heartbeats;
* the result Redis unreachable for ``outage_limit`` fails every pending request with
  ``RequestLost``: no answer can reach the client, the service has gone away;
* the broker unreachable that long puts the requests published before the outage in doubt;
* while the broker answers, the grace follows the workers' batch durations.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import RequestLost
from .restarts import RedisState

__all__ = ["Judge", "Verdict", "watched"]


@dataclass(frozen=True)
class Verdict:
    """One thing to do: ``kind`` is ``"read_grace"`` (set the grace from the heartbeats),
    ``"follow_grace"`` (raise it to them, while requests are in doubt), ``"doubt"`` (put the
    requests published before ``before`` in doubt, with ``error``), or ``"fail_all"`` (fail
    every pending request with ``error``; logged unless ``quiet``)."""

    kind: str
    why: str = ""
    before: float = 0.0
    error: RequestLost | None = None
    quiet: bool = False


class Judge:
    """The verdicts for one watched Redis; remembers which outage it has acted on."""

    def __init__(self, watch: RedisState, outage_limit: float) -> None:
        self.watch = watch
        self.outage_limit = outage_limit
        self._acted_on: float | None = None  # ``down_since`` of the outage already acted on

    def after_check(self, cutoff: float | None, now: float) -> list[Verdict]:
        """``cutoff``: what the check returned (the moment an empty restart lost requests)."""
        watch, limit = self.watch, self.outage_limit
        verdicts = []
        if cutoff is not None:
            if watch.serves_requests:
                verdicts.append(Verdict("read_grace"))  # the broker is back: read heartbeats
            verdicts.append(Verdict(
                "doubt", f"{watch.name} restarted without persistence", cutoff, RequestLost(
                    f"{watch.name} restarted without persistence (AOF off) and lost this "
                    "request or its result; send it again (start Redis with AOF, e.g. "
                    "-redis_persist on, to keep queued requests across restarts)")))
        began = watch.down_since
        if began is not None and now - began >= limit:
            if watch.serves_results:
                verdicts.append(Verdict("fail_all", f"{watch.name} is gone", error=RequestLost(
                    f"{watch.name} has been unreachable for over {limit:.0f}s: the service "
                    "went away or its Redis is down, and no answer can arrive; send the "
                    "request again once it is back"), quiet=self._acted_on == began))
            elif self._acted_on != began:
                verdicts.append(Verdict(
                    "doubt", f"{watch.name} unreachable for {limit:.0f}s", began, RequestLost(
                        f"{watch.name} has been unreachable for over {limit:.0f}s and this "
                        "request was not answered; send it again once it is back")))
            self._acted_on = began
        if watch.serves_requests and watch.down_since is None:
            verdicts.append(Verdict("follow_grace"))
        return verdicts


def watched(broker_url: str, result_url: str) -> list[tuple[str, str]]:
    """``(role, url)`` of each Redis server a client watches: both roles on one watch when one
    server plays both."""
    if result_url == broker_url:
        return [("broker and result", broker_url)]
    return [("broker", broker_url), ("result", result_url)]
