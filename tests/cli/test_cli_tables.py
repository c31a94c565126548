"""Tables read at 80 columns: nothing cut off with an ellipsis, nothing past column 80, ids short."""
from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from rayfleet.cli.commands.events import events_table
from rayfleet.cli.commands.jobs import jobs_table
from rayfleet.cli.commands.status import nodes_table, pools_table
from rayfleet.cli.output import age, count, short_instance
from rayfleet.cluster.decide.events import Event

NOW = 1_800_000_000.0


def render(table: Table) -> list[str]:
    console = Console(width=80, soft_wrap=True, highlight=False, record=True, file=open("/dev/null", "w"))
    console.print(table)
    lines = console.export_text().splitlines()
    assert all(len(line.rstrip()) <= 80 for line in lines), "\n".join(lines)
    assert not any("…" in line for line in lines), "\n".join(lines)
    return lines


def column(lines: list[str], header: str, joiner: str = "") -> str:
    """The text of one column across every row, its pieces joined (" " for word-wrapped text)."""
    headers = lines[0].split()
    start = lines[0].index(header)
    following = headers.index(header) + 1
    end = lines[0].index(headers[following], start + len(header)) if following < len(headers) else None
    return joiner.join(piece for line in lines[1:] if (piece := line[start:end].strip()))


def test_events_fit_and_say_the_reason_once() -> None:
    events = [
        Event(NOW, "lost", "local-demo-h100-0001 lost: Ray marked the node dead: SIGKILL", "h100",
              "local-demo-h100-0001", "liveness"),
        Event(NOW, "replace", "local-demo-h100-0001 terminated for replacement: Ray marked the node dead: SIGKILL",
              "h100", "local-demo-h100-0001", "Ray marked the node dead: SIGKILL"),
        Event(NOW, "launch", "launching node local-demo-h100-0003 for pool h100", "h100", "local-demo-h100-0003",
              "spec nodes=2"),
        Event(NOW, "scale", "pool h100 target 3", "h100", None, "manual target 3"),
    ]
    lines = render(events_table(events, "local-demo"))
    assert lines[0].split() == ["TIME", "KIND", "NODE", "MESSAGE", "REASON"]
    rows = [line for line in lines if line[:2].isdigit()]
    assert [row.split()[1] for row in rows] == ["lost", "replace", "launch", "scale"]  # one row starts per event
    assert [row.split()[2] for row in rows] == ["h100-0001", "h100-0001", "h100-0003", "h100"]
    assert "local-demo-" not in "\n".join(lines)
    assert column(lines, "MESSAGE").count("SIGKILL") == 1  # the replace row's message no longer repeats its reason
    assert column(lines, "REASON").count("SIGKILL") == 1


def test_only_node_ids_lose_the_fleet_name() -> None:
    events = [Event(NOW, "launch", "launching node t-h100-0001 for pool h100 (a t-shirt)", "h100",
                    "t-h100-0001", "spec nodes=1")]
    lines = render(events_table(events, "t"))
    assert column(lines, "MESSAGE", " ") == "launching node h100-0001 for pool h100 (a t-shirt)"


def test_jobs_fit_with_every_figure_and_fold_only_the_name() -> None:
    rows = [
        {"job": "moe-demo", "status": "RUNNING", "step": 1234, "steps": 2000, "loss": 5.12345,
         "tokens_per_s": 12345.6, "mfu": None, "restarts": 1, "pool": "h100", "strategy": "moe",
         "start_time": NOW - 725, "ettr": 0.874},
        {"job": "a-rather-long-job-name-for-the-table", "status": "SUCCEEDED", "step": 2000, "steps": 2000,
         "loss": 1.2, "tokens_per_s": None, "mfu": None, "restarts": 0, "pool": "a100-big", "strategy": "fsdp",
         "start_time": NOW - 2 * 86400},
    ]
    lines = render(jobs_table(rows, NOW))
    assert lines[0].split() == ["JOB", "STATE", "STEP", "LOSS", "TOK/S", "ETTR", "RESTARTS", "POOL", "STRATEGY",
                                "AGE"]
    assert lines[1].split() == ["moe-demo", "RUNNING", "1234/2000", "5.1235", "12.3k", "87%", "1", "h100", "moe",
                                "12m05s"]
    assert column(lines, "JOB") == "moe-demoa-rather-long-job-name-for-the-table"
    with_mfu = render(jobs_table([{**rows[0], "mfu": 0.412}], NOW))
    assert "MFU" in with_mfu[0] and "41.2%" in with_mfu[1]


def test_status_tables_fit() -> None:
    pool = {"name": "h100", "accelerator": "H100", "gpus_per_node": 8, "desired": 12, "ready": 10, "starting": 2,
            "unhealthy": 1, "draining": 1, "spares": 2, "spares_ready": 1, "min": 1, "max": 100}
    assert render(pools_table([pool]))[1].split() == ["h100", "8xH100", "12", "10", "2", "1", "1", "1/2", "1", "100"]
    node = {"instance": "local-demo-h100-0001", "pool": "h100", "state": "ready", "node_id": "af7874280bcc" * 4,
            "address": "192.168.100.200", "since": NOW - 3700, "spare": True,
            "reason": "joined Ray after a rather long boot on a slow machine"}
    lines = render(nodes_table([node], "local-demo", NOW))
    assert lines[1].split()[:7] == ["h100-0001", "h100", "ready", "(spare)", "af787428", "192.168.100.200", "1h01m"]
    assert "slow machine" in " ".join(lines)


def test_short_forms() -> None:
    assert short_instance("local-demo-h100-0001", "local-demo") == "h100-0001"
    assert short_instance("raycluster-gpu-worker-x7k2", "local-demo") == "raycluster-gpu-worker-x7k2"
    assert [age(s) for s in (5, 725, 3700, 2 * 86400 + 4000)] == ["5s", "12m05s", "1h01m", "2d01h"]
    assert [count(v) for v in (950, 12345.6, 4_560_000, 123_456)] == ["950", "12.3k", "4.56M", "123k"]
    assert time.time() > NOW - 10 * 365 * 86400  # NOW is a plausible clock
