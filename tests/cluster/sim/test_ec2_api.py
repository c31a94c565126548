"""The simulated EC2 API's token buckets and botocore's retries (cluster/sim/ec2_api.py)."""
from __future__ import annotations

import random

from rayfleet.cluster.sim.ec2_api import BotocoreRetries, Ec2Region, TokenBucket


def test_a_bucket_bursts_to_its_size_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(50, 5)
    assert sum(bucket.take(0.0) for _ in range(60)) == 50
    assert not bucket.take(0.1)
    assert bucket.take(0.2) and not bucket.take(0.2)   # one token per 0.2 s
    assert bucket.available(100.0) == 50                 # never above its size


def test_run_instances_takes_a_request_token_and_one_resource_token_per_instance() -> None:
    region = Ec2Region()
    assert region.call("RunInstances", 0.0, instances=1000)   # the resource bucket's whole burst
    assert not region.call("RunInstances", 0.0, instances=1)
    assert region.call("RunInstances", 0.5, instances=1)      # 2 instances a second come back
    assert region.calls == {"RunInstances": 3} and region.throttled == {"RunInstances": 1}
    assert region.requests["RunInstances"].available(0.5) == 49  # 48 after t=0, full again by 0.5 s, then one taken


def test_regions_do_not_share_buckets_and_actions_do_not_share_a_bucket() -> None:
    east, west = Ec2Region("east"), Ec2Region("west")
    for _ in range(100):
        assert east.call("DescribeInstances", 0.0)
    assert not east.call("DescribeInstances", 0.0) and west.call("DescribeInstances", 0.0)
    assert east.call("RunInstances", 0.0, instances=1)


def test_botocore_backs_off_with_jitter_up_to_twenty_seconds_and_stops_at_its_attempts() -> None:
    retries = BotocoreRetries(max_attempts=5, rng=random.Random(3))
    waits = [retries.backoff_s(i) for i in range(8)]
    assert all(0 <= w <= min(2 ** i, 20) for i, w in enumerate(waits))
    assert [retries.may_retry(attempt) for attempt in (1, 2, 3, 4, 5)] == [True, True, True, True, False]


def test_the_retry_quota_runs_out_under_sustained_throttling_and_comes_back_with_successes() -> None:
    retries = BotocoreRetries(max_attempts=20, rng=random.Random(0))
    granted = sum(retries.may_retry(1) for _ in range(150))
    assert granted == 100 and retries.quota == 0              # 500 / 5 per throttled retry
    retries.succeeded(retries=3)                              # gives back its last retry's cost
    retries.succeeded(retries=0)
    assert retries.quota == 6
