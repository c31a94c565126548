"""The per-worker training loop that Ray Train runs on every worker.

Build the model from `model/`, place it for the strategy (jobs/worker/parallelize.py), resume from
the newest committed checkpoint if any, then train: the batch of step s is a pure function of
(seed, s), so a resumed run continues the same loss curve. Rank 0 publishes progress every
`log_every` steps; all ranks checkpoint together every `checkpoint.every` steps and at the end, and
report to Ray Train only when a checkpoint is committed (a report is a barrier with Ray Train's
controller; see jobs/worker/progress.py). With `checkpoint.mode: async` a checkpoint is written
while training goes on and reported at the next checkpoint, a notice or the end, whichever
comes first, after waiting for it (jobs/worker/checkpoint.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from rayfleet.cluster.health import flight_recorder
from rayfleet.cluster.health.stepmarks import StepMarks
from rayfleet.jobs.contract import RunInfo
from rayfleet.jobs.worker import checkpoint, compilation, standby
from rayfleet.jobs.supervision import history
from rayfleet.jobs.worker.data import batch_digest, build_data, window_crcs
from rayfleet.jobs.worker.losslog import LossLog
from rayfleet.jobs.worker.parallelize import Parallel, parallelize
from rayfleet.jobs.worker.notices import NoticeAgreement, NoticeReader
from rayfleet.jobs.worker.precision import resolve as resolve_precision, working_copy
from rayfleet.jobs.worker.steplog import StepLog
from rayfleet.jobs.worker.progress import Progress, StepBeats
from rayfleet.jobs.client.spec import JobSpec
from rayfleet.model import ModelConfig, Transformer, get_preset

METRICS = "metrics.jsonl"


def model_config(spec: JobSpec) -> ModelConfig:
    return dataclasses.replace(get_preset(spec.model.preset), **spec.model.overrides)


def lr_at(spec: JobSpec, step: int) -> float:
    """Linear warmup, then cosine / linear decay to min_lr_ratio x lr, or constant."""
    opt = spec.optimizer
    if step < opt.warmup_steps:
        return opt.lr * (step + 1) / opt.warmup_steps
    if opt.schedule == "constant":
        return opt.lr
    progress = (step - opt.warmup_steps) / max(1, spec.steps - opt.warmup_steps)
    progress = min(1.0, progress)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if opt.schedule == "cosine" else 1 - progress
    return opt.lr * (opt.min_lr_ratio + (1 - opt.min_lr_ratio) * shape)


def build_optimizer(spec: JobSpec, par: Parallel, device: torch.device) -> torch.optim.Optimizer:
    # No weight decay on norms and biases (1-D tensors), as GPT-2/Llama training does.
    decay = [p for p in par.model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in par.model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": spec.optimizer.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda"  # fused AdamW: one kernel for all parameters on GPU
    return torch.optim.AdamW(groups, lr=spec.optimizer.lr, betas=spec.optimizer.betas,
                             eps=spec.optimizer.eps, fused=fused)


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's `train_loop_per_worker`."""
    import ray
    import ray.train
    import ray.train.torch

    spec = JobSpec.model_validate(config["spec"])
    run = RunInfo.from_json(config["run"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    # Ray Train's device for this worker (the one it made current): the local rank need not
    # index this worker's GPU among the CUDA_VISIBLE_DEVICES it shares with its node's workers.
    device = ray.train.torch.get_device() if run.device == "cuda" else torch.device("cpu")
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(spec.resources.cpus)))
    if rank == 0:  # the gang was placed and its processes run (goodput: the end of waiting)
        history.record(run.storage, spec.name, "worker", submission_id=run.submission_id, world=world,
                       standby=standby.was_standby(), process_started=_process_started())
        if spec.failure.warm_standby:  # what the driver's keeper prestarts standby processes with
            standby.publish_env(spec.name, run.submission_id)
    trainer = Trainer(spec, run, rank, world, device, history.job_dir(run.storage, spec.name))
    trainer.watch(ray.get_runtime_context().get_node_id())
    try:
        trainer.train(report=_ray_report())
    finally:
        if trainer.marks is not None:
            trainer.marks.close()
        if trainer.collectives is not None:
            trainer.collectives.close()
        if trainer.steplog is not None:  # the steps buffered when a peer's failure ends this attempt
            trainer.steplog.flush()


class Trainer:
    """One worker's training: usable inside Ray Train or any torch.distributed launcher."""

    def __init__(self, spec: JobSpec, run: RunInfo, rank: int, world: int, device: torch.device,
                 job_dir: Path) -> None:
        if device.type == "cuda" and device.index is None:  # "cuda": the current device, by its index
            device = torch.device("cuda", torch.cuda.current_device())
        self.spec, self.run, self.rank, self.world, self.device = spec, run, rank, world, device
        self.job_dir = job_dir
        self.run_dir = checkpoint.run_dir(job_dir, run.submission_id)  # Ray Train's, and the metrics'
        self.checkpoints = checkpoint.home(job_dir, spec, run)  # the job folder, or a prefix on S3
        self.checkpoint_run = checkpoint.run_dir(self.checkpoints, run.submission_id)
        torch.manual_seed(spec.seed)  # identical initial weights on every rank
        self.config = model_config(spec)
        model = Transformer(self.config)
        self.precision = resolve_precision(spec.precision, device)  # jobs/worker/precision.py
        model.to(self.precision.param_dtype)
        self.par = parallelize(model, spec.parallelism.strategy, spec.parallelism.expert_parallel, device,
                               fsdp_policy=self.precision.fsdp_policy())
        # bf16-mixed on one worker: forward and backward on a bf16 copy (jobs/worker/precision.py)
        self.working = working_copy(self.precision, self.par.model, world)
        self.runner = self.working.module if self.working is not None else self.par.module
        self.compiled = compilation.enabled(spec.compile, device)
        self.graphs = compilation.cuda_graphs(spec.compile, device, world)
        self.forward = compilation.forward_of(self.runner, spec.compile, device, world)
        self.optimizer = build_optimizer(spec, self.par, device)
        self.checkpointer = checkpoint.Checkpointer(self.par, self.optimizer, background=spec.checkpoint.mode == "async")
        self.checkpoint_metrics: dict[str, Any] = {}  # reported with the checkpoint being written
        self.data = build_data(spec.data, spec.seed)
        self.batches = self.data.train
        self.window_crcs = torch.zeros(0, dtype=torch.int64)  # of this rank's windows in the last step
        self.validation: tuple[int, float] | None = None  # (step, loss) of the newest evaluation
        self.step = 0
        self.restarts = 0
        self.checkpoint_step: int | None = None
        self.losses: list[tuple[int, float]] = []
        self.beats: StepBeats | None = None
        self.marks: StepMarks | None = None
        self.collectives: flight_recorder.Responder | None = None
        self.notices: NoticeReader | None = None
        self.agreement: NoticeAgreement | None = None
        self.steplog = StepLog(run.storage, spec.name, run.submission_id) if rank == 0 else None
        self.losslog = LossLog(device)
        self.progress: Progress | None = None

    def watch(self, node_id: str) -> None:
        """Publish step beats (hang detection) and read notices for `node_id` (Ray Train only)."""
        self.beats = StepBeats(self.spec.name, self.run.submission_id, self.rank)
        self.marks = StepMarks()  # exact step counters the node's agent reads when the job hangs
        self.collectives = flight_recorder.Responder()  # and this rank's collectives, on request
        self.notices = NoticeReader(node_id)
        self.agreement = NoticeAgreement(self.notices, self.world)

    def resume(self) -> None:
        latest = checkpoint.latest_checkpoint(self.checkpoints)
        if latest is not None:
            meta = self.checkpointer.load(latest)
            self.step = self.checkpoint_step = int(meta["step"])
            if self.working is not None:
                self.working.weights_from_master()
        attempts = [e for e in history.events(self.run.storage, self.spec.name)
                    if e["event"] == "started" and e.get("submission_id") == self.run.submission_id]
        self.restarts = len(attempts)  # attempts before this one
        if self.rank == 0:
            history.record(self.run.storage, self.spec.name, "started", submission_id=self.run.submission_id,
                           attempt=len(attempts) + 1, from_step=self.step, world=self.world)
            print(f"[rayfleet] {'resumed from step ' + str(self.step) if self.step else 'starting'} "
                  f"on {self.world} workers ({self.spec.parallelism.strategy})", flush=True)

    def train(self, report: Any = None) -> list[tuple[int, float]]:
        """Train to `spec.steps`; returns (step, loss) pairs seen by this rank at logged steps."""
        self.resume()
        self.progress = Progress(self.spec.name, self.run.submission_id, self.spec.steps, self.spec.pool,
                                 self.spec.parallelism.strategy, self.run_dir / METRICS) if self.rank == 0 else None
        tokens_per_step = self.spec.data.global_batch * self.spec.data.seq_len
        flops_per_token = self.par.model.flops_per_token(self.spec.data.seq_len)
        started, logged_step = time.perf_counter(), self.step
        compiling = self.compiled  # this attempt's first step compiles the model
        # Per step, the host does no more than the model's own launches: no host sync (the loss
        # is read at logged steps), step events buffered (jobs/worker/steplog.py), beats written
        # at most once a second, notices agreed by a non-blocking collective one step late.
        while self.step < self.spec.steps:
            step_started = time.perf_counter()
            if self.marks is not None:
                self.marks.started(self.step + 1)
            loss = self.train_step()
            self.step += 1
            if compiling and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # once: the compiling step's true duration
            if self.marks is not None:
                self.marks.finished(self.step)
            if self.spec.step_time_s:  # benchmarks pad steps to a known length
                time.sleep(max(0.0, self.spec.step_time_s - (time.perf_counter() - step_started)))
            step_s = time.perf_counter() - step_started
            if self.beats is not None:
                self.beats.publish(self.step, step_s)
            if self.steplog is not None:  # goodput accounting (jobs/supervision/goodput.py)
                self.steplog.step(self.step, step_s)
                if compiling:
                    self.steplog.flush()
                    history.record(self.run.storage, self.spec.name, "compiled", submission_id=self.run.submission_id,
                                   step=self.step, duration_s=round(step_s, 4))
            compiling = False
            deadline = self.agreement.poll() if self.agreement is not None else 0.0
            if deadline > 0:
                self.hold_for_notice(report, deadline)
                continue
            evaluating = self.evaluation_due()
            if self.step % self.spec.log_every == 0 or self.step == self.spec.steps or evaluating:
                digest = self.batch_digest()
                elapsed = time.perf_counter() - started
                tokens_per_s = tokens_per_step * (self.step - logged_step) / max(elapsed, 1e-9)
                if evaluating:  # after the throughput's clock stopped: evaluation is not training
                    self.validation = (self.step, self.evaluate())
                mfu = None
                if self.run.peak_tflops:
                    mfu = flops_per_token * tokens_per_s / (self.run.peak_tflops * 1e12 * self.world)
                self.losslog.add(self.step, self.mean(loss), tokens_per_s=tokens_per_s, mfu=mfu,
                                 restarts=self.restarts, checkpoint_step=self.checkpoint_step,
                                 validation=self.validation, batch_crc=digest)
                started, logged_step = time.perf_counter(), self.step
            self.publish_losses()
            if self.step % self.spec.checkpoint.every == 0 or self.step == self.spec.steps:
                self.publish_losses(wait=True)
                self.save(report)
        self.finish_checkpoint(report)  # the job ends only with its last checkpoint committed
        self.publish_losses(wait=True)
        if self.agreement is not None:
            self.agreement.wait()  # no collective left in flight
        if self.steplog is not None:
            self.steplog.flush()
        return self.losses

    def publish_losses(self, wait: bool = False) -> None:
        """Publish the logged steps whose loss has reached the host (jobs/worker/losslog.py)."""
        for step, loss, figures in self.losslog.ready(wait):
            self.losses.append((step, loss))
            if self.progress is not None:
                self.progress.publish(step, loss, **figures)

    def hold_for_notice(self, report: Any, deadline: float) -> None:
        """A node of this job goes away soon: checkpoint now, then hold at this step until the
        controller ends that node (every rank then stops: Ray Train restarts the workers on its
        replacement, from this checkpoint) or the deadline passes (the notice was withdrawn: go on)."""
        from rayfleet.jobs.worker.notices import acknowledge, hold

        if self.steplog is not None:
            self.steplog.flush()
        self.publish_losses(wait=True)
        self.finish_checkpoint(report)
        if self.checkpoint_step != self.step:
            self.save(report, wait=True)
        if self.rank == 0:
            acknowledge(self.spec.name, self.run.submission_id, self.step, deadline)
            history.record(self.run.storage, self.spec.name, "notice", submission_id=self.run.submission_id,
                           step=self.step, deadline=deadline, reason="a node of the job goes away (notice)")
            print(f"[rayfleet] notice: checkpointed at step {self.step}; holding until the node is replaced",
                  flush=True)
        hold(deadline)
        if self.agreement is not None:
            self.agreement.handled(deadline)

    def train_step(self) -> torch.Tensor:
        inputs, targets = self.batches.batch(self.step, self.rank, self.world)
        self.window_crcs = window_crcs(inputs, targets)
        inputs, targets = inputs.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.spec, self.step)
        compilation.step_begins(self.graphs)
        with self.compute_context():
            out = self.forward(inputs, targets)
            loss = out.loss + out.aux_loss
        loss.backward()
        if self.working is not None:  # clipping, AdamW on the master and the copy-back in one pass
            self.working.step(self.optimizer, self.spec.optimizer.grad_clip)
            return out.loss.detach()
        self.par.after_backward()
        self.par.clip_grad_norm(self.spec.optimizer.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return out.loss.detach()

    def compute_context(self) -> Any:
        """Where forward runs: under the policy's autocast, or none on a bf16 working copy."""
        return self.precision.context(self.device) if self.working is None else contextlib.nullcontext()

    def evaluation_due(self) -> bool:
        """Whether to evaluate now: every `eval_every` steps and at the last step."""
        validation = self.spec.data.validation
        if self.data.validation is None or validation is None:
            return False
        return self.step % validation.eval_every == 0 or self.step == self.spec.steps

    @torch.no_grad()
    def evaluate(self) -> float:
        """The language-model loss on the validation batches, every rank its slice, averaged over
        all ranks (a collective)."""
        assert self.data.validation is not None
        self.runner.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        try:
            for index in range(self.data.validation.batches):
                inputs, targets = self.data.validation.batch(index, self.rank, self.world)
                with self.compute_context():
                    out = self.forward(inputs.to(self.device), targets.to(self.device))
                total += out.loss.detach().double()
        finally:
            self.runner.train()
        return float(self.mean(total / self.data.validation.batches))

    def batch_digest(self) -> str | None:
        """The digest of the last step's global batch: every rank's window CRCs gathered in rank
        order (a collective), so the same tokens give the same digest at any world size. Not on
        several GPUs, where the gather would be a host sync every logged step."""
        crcs = self.window_crcs
        if self.world > 1 and self.device.type == "cuda":
            return None
        if self.world > 1:
            local = crcs.to(self.device if self.device.type == "cuda" else "cpu")
            parts = [torch.empty_like(local) for _ in range(self.world)]
            dist.all_gather(parts, local)
            crcs = torch.cat(parts).cpu()
        return batch_digest(crcs)

    def mean(self, loss: torch.Tensor) -> torch.Tensor:
        """The language-model loss averaged over all ranks (equal tokens per rank), on the device:
        on NCCL the all-reduce is queued on the stream, the host does not wait for it."""
        value = loss.float().clone()
        if self.world > 1:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value /= self.world
        return value

    def save(self, report: Any = None, wait: bool = False) -> None:
        """Checkpoint this step (a collective), after committing and reporting the one before;
        with `checkpoint.mode: sync` or `wait`, commit and report this one too before returning."""
        stalled = time.perf_counter()
        self.finish_checkpoint(report)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_metrics = {"step": self.step, "loss": self.losses[-1][1] if self.losses else None}
        self.checkpointer.save(self.checkpoint_run, self.step,
                               {"job": self.spec.name, "submission_id": self.run.submission_id,
                                "strategy": self.spec.parallelism.strategy,
                                "data": self.batches.position(self.step)})
        if wait or not self.checkpointer.background:
            self.finish_checkpoint(report)
        if self.rank == 0:
            if self.steplog is not None:
                self.steplog.flush()  # the steps before it, in order
            # recorded when training goes on: goodput gives the wall time up to it to "checkpoint",
            # so an async save counts its copy and any wait for the one before, not its write
            history.record(self.run.storage, self.spec.name, "checkpoint", submission_id=self.run.submission_id,
                           step=self.step, duration_s=round(time.perf_counter() - stalled, 4),
                           mode=self.spec.checkpoint.mode)

    def finish_checkpoint(self, report: Any = None) -> checkpoint.Location | None:
        """Wait for the checkpoint being written, if any (a collective); once it is committed,
        prune older ones and report it to Ray Train. Returns its folder."""
        saved = self.checkpointer.finish()
        if saved is None:
            return None
        self.checkpoint_step = saved.step
        if self.rank == 0:
            checkpoint.prune(self.checkpoints, self.spec.checkpoint.keep, self.checkpoint_run)
        if report is not None:
            report(self.checkpoint_metrics, saved.path)
        return saved.path


def _process_started() -> float | None:
    """When this worker's process started (epoch seconds): splits `waiting` into Ray Train
    placing the gang and starting processes, and the process importing and joining its group."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # psutil comes with ray[default]; a worker without it records no split
        return None


def _ray_report() -> Any:
    """A report function registering our committed checkpoint with Ray Train, without copying it
    (one on S3 is reported without a checkpoint: Ray Train's storage is a local folder)."""
    import ray.train
    from ray.train import Checkpoint
    from ray.train.v2.api.report_config import CheckpointUploadMode

    def report(metrics: dict[str, Any], path: checkpoint.Location) -> None:
        rank = ray.train.get_context().get_world_rank()
        shared = rank == 0 and isinstance(path, Path)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(path)) if shared else None,
                         checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)

    return report

