"""The job contract: the run info's JSON as jobs carry and record it, submission ids, the driver's command."""
from __future__ import annotations

import dataclasses
import re
import sys

from rayfleet.cluster.spec.capabilities import capabilities
from rayfleet.jobs.contract import (DRIVER_ACTOR_PREFIX, RunInfo, driver_command, new_submission_id, python_for,
                                    submission_of_driver_actor)

RENDERED = ('{"storage": "/mnt/shared/rayfleet", "device": "cuda", "gpus_per_worker": 1.0, "workers_per_node": 8, '
            '"peak_tflops": 989.0}')  # manifests/rendered/k8s-job/rayjob.yaml: no submission id
SUBMITTED = ('{"storage": "/s", "device": "cpu", "gpus_per_worker": 0.0, "workers_per_node": 1, "peak_tflops": null, '
             '"submission_id": "j-20250101-120000-ab12"}')


def test_the_run_info_reads_and_writes_the_json_that_jobs_carry_and_histories_keep() -> None:
    for text in (RENDERED, SUBMITTED):
        assert RunInfo.from_json(text).to_json() == text
    rendered = RunInfo.from_json(RENDERED)
    assert rendered.submission_id is None and rendered.peak_tflops == 989.0
    named = dataclasses.replace(rendered, submission_id="j-1")
    assert named.to_json() == RENDERED[:-1] + ', "submission_id": "j-1"}'  # as a driver of a RayJob records it


def test_a_run_info_without_workers_per_node_reads_as_one_per_node() -> None:
    run = RunInfo.from_json('{"submission_id": "a", "storage": "/s", "device": "cpu", "gpus_per_worker": 1, '
                            '"peak_tflops": null}')
    assert (run.workers_per_node, run.gpus_per_worker, run.submission_id) == (1, 1, "a")


def test_a_submission_id_is_the_job_name_the_time_and_a_random_suffix() -> None:
    assert re.fullmatch(r"moe-pretrain-\d{8}-\d{6}-[0-9a-f]{4}", new_submission_id("moe-pretrain"))


def test_the_driver_actor_names_its_submission() -> None:
    assert submission_of_driver_actor(DRIVER_ACTOR_PREFIX + "j-1") == "j-1"
    assert submission_of_driver_actor("rayfleet-controller") is None


def test_the_driver_runs_in_this_interpreter_on_a_local_fleet_else_in_the_images_python() -> None:
    assert driver_command(python_for(capabilities("local"))) == f"{sys.executable} -m rayfleet.jobs.driver.entrypoint"
    assert driver_command(python_for(capabilities("kubernetes"))) == "python -m rayfleet.jobs.driver.entrypoint"
