"""The job's driver, run by Ray Jobs: `python -m rayfleet.jobs.driver.entrypoint`.

It reads the job spec and run info from the environment (SPEC_ENV and RUN_ENV of jobs/contract.py,
set in the job's runtime_env by its submitter), builds a `TorchTrainer` whose workers land on the
job's pool (a label selector on `rayfleet.io/pool`), and records the outcome in the job's durable
history.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import traceback
from typing import Any

from rayfleet.jobs.contract import RUN_ENV, SPEC_ENV, RunInfo, new_submission_id
from rayfleet.names import POOL_LABEL


def build_trainer(spec: Any, run: RunInfo) -> Any:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    from rayfleet.jobs.worker import checkpoint
    from rayfleet.jobs.supervision import history
    from rayfleet.jobs.driver import warm
    from rayfleet.jobs.worker.loop import train_worker

    low, high = spec.worker_range
    gpus = run.gpus_per_worker
    resources = {"CPU": spec.resources.cpus, **({"GPU": gpus} if gpus else {})}
    scaling = ScalingConfig(
        num_workers=low if low == high else (low, high),
        use_gpu=bool(gpus),
        resources_per_worker=resources,
        label_selector={POOL_LABEL: spec.pool},
    )
    # One Ray Train run per submission: Ray Train resumes a reused run name from its snapshot
    # and refuses one whose checkpoints were pruned. Resuming across submissions is ours.
    folder = checkpoint.run_dir(history.job_dir(run.storage, spec.name), run.submission_id)
    config = RunConfig(
        name=folder.name,
        storage_path=str(folder.parent),
        failure_config=FailureConfig(max_failures=spec.failure.max_restarts),
        checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpoint.keep),
        worker_runtime_env=warm.worker_runtime_env() if spec.failure.warm_standby else None,
    )
    # gloo where the GPUs are simulated (a CPU machine advertising GPU resources), NCCL on real ones.
    # Collectives time out at the hang policy's widest bound: none ever outwaits the policy.
    torch_config = TorchConfig(backend="nccl" if run.device == "cuda" else "gloo",
                               timeout_s=int(spec.hang.first_steps_timeout_s))
    loop_config = {"spec": spec.model_dump(mode="json"), "run": run.to_json()}
    return trainer_class()(train_worker, train_loop_config=loop_config,
                           scaling_config=scaling, run_config=config, torch_config=torch_config)


def trainer_class() -> Any:
    """TorchTrainer, less Ray Data's callback for jobs without Ray datasets (ours have none: batches
    come from jobs/worker/data.py). Ray 2.60 starts that callback's DatasetManager actor, a new process that
    imports ray.data (1.5 s of CPU measured), at every worker-group start, restarts included, on the
    driver's node: on a busy node it slows the very restart it rides along."""
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks import DatasetsCallback

    class Trainer(TorchTrainer):
        def _create_default_callbacks(self) -> list[Any]:
            callbacks = super()._create_default_callbacks()
            return callbacks if self.datasets else [c for c in callbacks if not isinstance(c, DatasetsCallback)]

    return Trainer


def standby_keeper(spec: Any, run: RunInfo) -> Any:
    """Warm standby workers on the pool's nodes (jobs/driver/warm.py), unless the spec turns them off."""
    if not spec.failure.warm_standby:
        return None
    from rayfleet.jobs.driver import warm

    per_node = min(run.workers_per_node, spec.worker_range[1])
    return warm.Keeper(spec.name, run.submission_id, spec.pool, per_node).start()


def own_node_temp_dir() -> str | None:
    """The temp dir of the node this driver runs on, from its raylet's command line.

    Ray Jobs starts the driver under a JobSupervisor (a worker of some node's raylet), but
    `ray.init` attaches to the head's raylet whenever several nodes share one IP (every local node
    does), and Ray Train pins its controller to the driver's node: a job meant to run off the head
    would still die with the head. Connecting with the node's own temp dir picks the right raylet.
    """
    import psutil

    try:
        ancestor = psutil.Process().parent()
        while ancestor is not None and ancestor.name() != "raylet":
            ancestor = ancestor.parent()
        args = ancestor.cmdline() if ancestor is not None else []
    except psutil.Error:
        return None
    for arg in args:
        if arg.startswith("--temp_dir="):
            return arg.split("=", 1)[1]
    return None


def main() -> int:
    from rayfleet.jobs.supervision import history
    from rayfleet.jobs.client.spec import JobSpec

    spec = JobSpec.model_validate_json(os.environ[SPEC_ENV])
    run = RunInfo.from_json(os.environ[RUN_ENV])
    if run.submission_id is None:  # applied as a RayJob manifest, not submitted through the Job API
        run = dataclasses.replace(run, submission_id=new_submission_id(spec.name))
        history.record(run.storage, spec.name, "submitted", submission_id=run.submission_id,
                       pool=spec.pool, strategy=spec.parallelism.strategy, steps=spec.steps,
                       spec=spec.model_dump(mode="json"), run=run.to_json(), user="rayjob")
    history.record(run.storage, spec.name, "driver", submission_id=run.submission_id)
    import ray

    ray.init(logging_level="WARNING", _temp_dir=own_node_temp_dir())
    keeper = standby_keeper(spec, run)
    try:
        trainer = build_trainer(spec, run)
        # the driver is connected and has imported Ray Train: what is left of `waiting` is Ray
        # Train's (its controller, the placement of the gang, the workers' processes)
        history.record(run.storage, spec.name, "fit", submission_id=run.submission_id)
        result = trainer.fit()
    except Exception as error:  # the job failed for good: record why, exit non-zero
        history.record(run.storage, spec.name, "finished", submission_id=run.submission_id,
                       state="FAILED", error=f"{type(error).__name__}: {error}"[:2000])
        traceback.print_exc()
        return 1
    finally:
        if keeper is not None:
            keeper.stop()
    metrics = result.metrics or {}
    step = metrics.get("step")
    if step is None:  # Ray Train kept no metrics (e.g. a resumed job already at its last step)
        from rayfleet.jobs.worker import checkpoint

        latest = checkpoint.latest_checkpoint(checkpoint.home(history.job_dir(run.storage, spec.name), spec, run))
        step = checkpoint.read_meta(latest)["step"] if latest is not None else None
    history.record(run.storage, spec.name, "finished", submission_id=run.submission_id,
                   state="SUCCEEDED", step=step, loss=metrics.get("loss"))
    print(f"[rayfleet] job {spec.name} finished at step {step} "
          f"with loss {metrics.get('loss')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
