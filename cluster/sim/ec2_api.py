"""EC2's API rate limits as the simulator models them: token buckets per account and region, and
the retries botocore makes when a call is throttled.

Amazon EC2 throttles each account per region with token buckets ("Request throttling for the
Amazon EC2 API", https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html):
- request rate limiting: each API action has its own bucket; a call takes one token, a call
  without one fails with RequestLimitExceeded;
- resource rate limiting: RunInstances and TerminateInstances also take one token per instance
  from a second bucket of the action.
A bucket holds at most its size and gains its refill rate every second. The sizes and rates
below are the page's defaults (an account may have others: the page says how to ask).

botocore's standard retry mode (botocore/retries/standard.py), which the AWS provider uses with
`aws.api_max_attempts` tries: a throttled call is retried after rand(0, 1) * min(2 ** i, 20) s
(i = 0 before the first retry), while the client's retry quota (500, a throttled retry costing 5;
a call that succeeds gives back its last retry's cost, or 1 if it needed none) lasts.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    size: float
    refill_per_s: float
    tokens: float = -1.0   # starts full
    at: float = 0.0        # when `tokens` was last brought up to date

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.size

    def _refill(self, now: float) -> None:
        if now > self.at:
            self.tokens = min(self.size, self.tokens + (now - self.at) * self.refill_per_s)
            self.at = now

    def available(self, now: float) -> float:
        self._refill(now)
        return self.tokens

    def take(self, now: float, count: float = 1.0) -> bool:
        """Take `count` tokens at `now` (never before an earlier take) if the bucket holds them."""
        self._refill(now)
        if self.tokens + 1e-9 < count:
            return False
        self.tokens -= count
        return True


REQUEST_BUCKETS: dict[str, tuple[float, float]] = {
    # action: (bucket size, refill per second), the page's "Request token bucket sizes and refill rates"
    "RunInstances": (50.0, 5.0),          # resource-intensive actions
    "TerminateInstances": (50.0, 5.0),    # resource-intensive actions
    "DescribeInstances": (100.0, 20.0),   # non-mutating actions
    "CreateTags": (50.0, 5.0),            # mutating actions
}
RESOURCE_BUCKETS: dict[str, tuple[float, float]] = {
    # action: (bucket size, refill per second) in instances, the page's "Resource token bucket sizes and refill rates"
    "RunInstances": (1000.0, 2.0),
    "TerminateInstances": (1000.0, 20.0),
}


@dataclass
class Ec2Region:
    """One account's EC2 API in one region: every action's buckets, and what was asked of them."""

    name: str = "us-east-1"
    requests: dict[str, TokenBucket] = field(default_factory=lambda: {
        action: TokenBucket(size, rate) for action, (size, rate) in REQUEST_BUCKETS.items()})
    resources: dict[str, TokenBucket] = field(default_factory=lambda: {
        action: TokenBucket(size, rate) for action, (size, rate) in RESOURCE_BUCKETS.items()})
    calls: dict[str, int] = field(default_factory=dict)
    throttled: dict[str, int] = field(default_factory=dict)

    def call(self, action: str, now: float, instances: int = 0) -> bool:
        """One API call at `now` (acting on `instances` instances): whether EC2 accepts it. A call
        refused by its resource bucket took its request token all the same."""
        self.calls[action] = self.calls.get(action, 0) + 1
        accepted = self.requests[action].take(now)
        if accepted and action in self.resources and instances:
            accepted = self.resources[action].take(now, instances)
        if not accepted:
            self.throttled[action] = self.throttled.get(action, 0) + 1
        return accepted


RETRY_QUOTA = 500.0
THROTTLING_RETRY_COST = 5.0
NO_RETRY_INCREMENT = 1.0
MAX_BACKOFF_S = 20.0


@dataclass
class BotocoreRetries:
    """One boto3 client's standard-mode retries (see the module docstring); `rng` draws the jitter."""

    max_attempts: int = 5
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    quota: float = RETRY_QUOTA

    def backoff_s(self, retry: int) -> float:
        """The wait before retry `retry` (0 for the first retry) of a throttled call."""
        return self.rng.random() * min(2.0 ** retry, MAX_BACKOFF_S)

    def may_retry(self, attempt: int) -> bool:
        """After a throttled attempt `attempt` (1-based): whether botocore tries again (and pays for it)."""
        if attempt >= self.max_attempts or self.quota < THROTTLING_RETRY_COST:
            return False
        self.quota -= THROTTLING_RETRY_COST
        return True

    def succeeded(self, retries: int) -> None:
        self.quota = min(RETRY_QUOTA, self.quota + (THROTTLING_RETRY_COST if retries else NO_RETRY_INCREMENT))
