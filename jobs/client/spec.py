"""The job spec: one YAML file in, validated typed objects out.

A job names a pool, its workers (fixed, or min/max for elastic runs), per-worker resources, the
parallelism (ddp, fsdp, moe with an expert-parallel degree), a model preset with overrides, data,
optimizer and schedule, steps, checkpointing and a failure policy. `check_against_fleet` then
checks it against the running fleet before anything is sent. Errors read like the fleet spec's:
file, field, value, fix; exit code 2.

The model section is checked by building the `ModelConfig`; that imports torch, so it happens in
`validate_model`, called by the CLI's submit path and never at import time.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rayfleet.errors import BadInput
from rayfleet.cluster.spec.fleet import NAME_PATTERN, FleetSpec, S3Url
from rayfleet.cluster.spec.reading import describe_validation_error, load_yaml_mapping


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ElasticWorkers(Strict):
    min: int = Field(ge=1)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> ElasticWorkers:
        if self.max < self.min:
            raise ValueError(f"workers.max ({self.max}) is less than workers.min ({self.min})")
        return self


class Resources(Strict):
    cpus: float = Field(default=1, gt=0, description="CPUs per worker")
    gpus: float | None = Field(default=None, ge=0, description="GPUs per worker; default 1 on GPU pools")


class Parallelism(Strict):
    strategy: Literal["ddp", "fsdp", "moe"] = "ddp"
    expert_parallel: int = Field(default=1, ge=1, description="ranks the experts are sharded over (moe)")


class ModelSection(Strict):
    preset: str = Field(default="tiny", description="tiny, tiny_moe, dense_124m, moe_8x")
    overrides: dict[str, Any] = Field(default_factory=dict, description="any ModelConfig field")


class ValidationSection(Strict):
    """A held-out split: the last `fraction` of the corpus, or a corpus of its own (`tokens`)."""

    fraction: float | None = Field(default=None, gt=0, lt=1,
                                   description="hold out this tail fraction of the training corpus")
    tokens: str | None = Field(default=None, description="a prepared corpus of its own (folder or s3://)")
    eval_every: int = Field(default=50, ge=1, description="steps between evaluations (and at the last step)")
    eval_batches: int = Field(default=4, ge=1, description="global batches per evaluation, the same ones each time")

    @model_validator(mode="after")
    def _one_source(self) -> ValidationSection:
        if (self.fraction is None) == (self.tokens is None):
            raise ValueError("validation needs exactly one of fraction (a held-out tail) or tokens (its own corpus)")
        return self


class DataSection(Strict):
    corpus: Literal["python-docs"] = Field(
        default="python-docs", description="the Python language reference shipped with Python (pydoc_data); "
                                           "used when neither tokens nor text is given")
    tokens: str | None = Field(
        default=None, description="a prepared corpus (`rayfleet data prepare`): a folder or s3://bucket/prefix "
                                  "holding manifest.json and .bin shards, memory-mapped or read by ranged GETs")
    text: str | None = Field(
        default=None, description="text files (path, folder or glob; plain text, JSONL `text`, Parquet `text`), "
                                  "tokenised by every worker at start-up; for small corpora")
    tokenizer: str | None = Field(default=None, description="tokenizer.json for `text` (default: bytes, vocab 256)")
    endpoint_url: str | None = Field(
        default=None, description="S3 endpoint for s3:// corpora (default: AWS_ENDPOINT_URL or AWS's own)")
    seq_len: int = Field(default=128, ge=8, le=131072)
    global_batch: int = Field(default=8, ge=1, description="sequences per step across all workers")
    shuffle: Literal["windows", "blocks"] = Field(
        default="windows", description="the order an epoch of `tokens` or `text` reads its windows in: windows, a "
                                       "permutation of all of them; blocks, blocks of ~1M tokens in a permuted order "
                                       "with windows permuted within each group of 16 blocks, read a block per GET "
                                       "(fast from s3://)")
    validation: ValidationSection | None = Field(
        default=None, description="validation loss and perplexity every eval_every steps")

    @model_validator(mode="after")
    def _one_corpus(self) -> DataSection:
        if self.tokens and self.text:
            raise ValueError("data.tokens and data.text are exclusive: name one corpus")
        if self.tokenizer and not self.text:
            raise ValueError("data.tokenizer applies to data.text only (a prepared corpus names its own)")
        return self

    def local_paths_from(self, folder: Path) -> DataSection:
        """Relative local paths read as relative to `folder` (the job file's): workers run elsewhere."""
        def absolute(value: str | None) -> str | None:
            if value is None or value.startswith("s3://") or Path(value).is_absolute():
                return value
            return str((folder / value).resolve())

        validation = self.validation
        if validation is not None and validation.tokens:
            validation = validation.model_copy(update={"tokens": absolute(validation.tokens)})
        return self.model_copy(update={"tokens": absolute(self.tokens), "text": absolute(self.text),
                                       "tokenizer": absolute(self.tokenizer), "validation": validation})


class OptimizerSection(Strict):
    lr: float = Field(default=3e-3, gt=0, le=1)
    weight_decay: float = Field(default=0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(default=1e-8, gt=0)
    grad_clip: float = Field(default=1.0, ge=0, description="0 = no clipping")
    warmup_steps: int = Field(default=10, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)


class CheckpointSection(Strict):
    every: int = Field(default=50, ge=1, description="steps between checkpoints")
    keep: int = Field(default=2, ge=1, description="newest checkpoints kept")
    mode: Literal["async", "sync"] = Field(
        default="async",
        description="async: training goes on while a checkpoint is written (its state copied to host memory, a "
                    "background thread writes every rank's shards); it is committed, and reported, once every shard is "
                    "durable, and the next checkpoint and the job's end wait for it. sync: training waits for the write")
    storage: S3Url | None = Field(
        default=None, description="s3://BUCKET/PREFIX for this job's checkpoints (any S3-compatible store; credentials "
                                  "from the nodes' environment or role); default: the fleet's checkpoint_storage, "
                                  "else the fleet's storage path")
    endpoint_url: str | None = Field(
        default=None, description="S3 endpoint for the checkpoints (default: the fleet's checkpoint_endpoint_url "
                                  "with its storage, else AWS_ENDPOINT_URL or AWS's own)")


class FailureSection(Strict):
    max_restarts: int = Field(default=3, ge=-1, description="-1: restart forever")
    poll_interval_s: float = Field(
        default=0.5, gt=0, le=60,
        description="how often Ray Train's controller polls its workers (Ray's default 2 s): a failure is "
                    "noticed, and a report returns, within it; raise it for jobs of thousands of workers")
    warm_standby: bool = Field(
        default=True,
        description="keep idle worker processes, torch already imported, on the pool's nodes while the job runs, so "
                    "a restart skips process start and imports (jobs/driver/warm.py; about 300 MB of host memory each)")


class HangSection(Strict):
    """A job that stops making progress is restarted from its checkpoint, with every rank's stacks
    saved first. Measured with Ray 2.60 alone: a SIGSTOPped worker was noticed after ~420 s."""

    enabled: bool = True
    factor: float = Field(default=3.0, ge=1, description="a step slower than factor x median step time ...")
    margin_s: float = Field(default=10.0, ge=0, description="... plus this margin is a hang")
    first_steps: int = Field(default=5, ge=1, description="steps before the median step time is trusted")
    first_steps_timeout_s: float = Field(
        default=180.0, gt=0, description="bound until then (model build, compilation, data warm-up); also the "
                                         "collectives' timeout, so no collective ever outwaits the policy")


class JobSpec(Strict):
    name: str = Field(pattern=NAME_PATTERN, description="resubmitting a name continues its checkpoints")
    pool: str
    workers: int | ElasticWorkers = Field(default=1, description="a number, or {min, max} for elastic runs")
    resources: Resources = Resources()
    parallelism: Parallelism = Parallelism()
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    optimizer: OptimizerSection = OptimizerSection()
    steps: int = Field(default=100, ge=1)
    checkpoint: CheckpointSection = CheckpointSection()
    failure: FailureSection = FailureSection()
    hang: HangSection = HangSection()
    step_time_s: float = Field(
        default=0.0, ge=0, description="pad every step to at least this long (benchmarks and tests that need "
                                       "steps of a known length, e.g. 0.5 s); 0 = as fast as it runs")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: cuda where the pool's GPUs are real, else cpu (gloo)")
    precision: Literal["auto", "fp32", "bf16-mixed", "bf16"] = Field(
        default="auto",
        description="auto: bf16-mixed on cuda, fp32 on cpu. bf16-mixed: bf16 compute, fp32 master weights and "
                    "optimizer state, gradients reduced in fp32 (ddp, fsdp, moe alike; jobs/worker/precision.py). "
                    "bf16: weights, gradients and optimizer state in bf16 with no fp32 master copy: fastest, but "
                    "updates smaller than a weight's bf16 spacing (1/256 of it) are lost, which stalls long runs")
    compile: bool | Literal["auto"] = Field(
        default="auto", description="torch.compile the model; auto: on cuda, not on cpu. false turns it off "
                                    "(eager: no compilation time, slower steps)")
    driver: Literal["auto", "head", "pool"] = Field(
        default="auto", description="where the driver (and Ray Train's controller) runs; auto: on the job's "
                                    "pool when the fleet's head is fault tolerant, else on the head")
    seed: int = 0
    log_every: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        low, high = self.worker_range
        if isinstance(self.workers, int) and self.workers < 1:
            raise ValueError("workers must be at least 1")
        for world in {low, high}:
            if self.data.global_batch % world:
                raise ValueError(f"data.global_batch ({self.data.global_batch}) must divide evenly among "
                                 f"{world} workers; use a multiple of {world}")
        ep = self.parallelism.expert_parallel
        if ep > 1 and self.parallelism.strategy != "moe":
            raise ValueError("parallelism.expert_parallel > 1 needs strategy: moe")
        if self.parallelism.strategy == "moe":
            for world in {low, high}:
                if world % ep:
                    raise ValueError(f"parallelism.expert_parallel ({ep}) must divide the workers ({world})")
        return self

    @property
    def worker_range(self) -> tuple[int, int]:
        if isinstance(self.workers, int):
            return self.workers, self.workers
        return self.workers.min, self.workers.max


def load_job_spec(path: str | Path) -> JobSpec:
    """Read and validate a job YAML file; BadInput naming file, field, value and fix."""
    data = load_yaml_mapping(path, kind="job spec")
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as error:
        raise BadInput(describe_validation_error(path, error, data, JobSpec)) from None
    return spec.model_copy(update={"data": spec.data.local_paths_from(Path(path).resolve().parent)})


def validate_model(spec: JobSpec, path: str | Path) -> Any:
    """Build the job's ModelConfig (imports torch); BadInput naming the bad option."""
    import dataclasses

    from rayfleet.model import ModelConfig, get_preset

    try:
        base = get_preset(spec.model.preset)
    except KeyError as error:
        raise BadInput(f"{path}: model.preset: got {spec.model.preset!r}: {error.args[0]}") from None
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(spec.model.overrides) - fields)
    if unknown:
        raise BadInput(f"{path}: model.overrides.{unknown[0]}: unknown model option; "
                       f"accepted: {', '.join(sorted(fields))}")
    try:
        config = dataclasses.replace(base, **spec.model.overrides)
    except (ValueError, TypeError) as error:
        raise BadInput(f"{path}: model.overrides: {error}") from None
    where = f"{path}: "
    if spec.parallelism.strategy == "moe":
        if config.n_experts == 0:
            raise BadInput(f"{where}parallelism.strategy: moe needs a model with experts; "
                           "use preset tiny_moe or moe_8x, or set model.overrides.n_experts")
        if config.n_experts % spec.parallelism.expert_parallel:
            raise BadInput(f"{where}parallelism.expert_parallel: {spec.parallelism.expert_parallel} must divide "
                           f"the model's {config.n_experts} experts")
    if config.memory_tokens == 0 and spec.data.seq_len > config.max_seq_len:
        raise BadInput(f"{where}data.seq_len: got {spec.data.seq_len}: longer than the model's max_seq_len "
                       f"({config.max_seq_len}); lower it or set model.overrides.max_seq_len")
    return config


def validate_data(spec: JobSpec, path: str | Path, vocab_size: int) -> None:
    """Check the job's corpus itself (manifest, shards, vocabulary, length) against a model of
    `vocab_size` tokens; BadInput naming the job file, the field, the corpus file and the fix."""
    from rayfleet.jobs.data import checks, order
    from rayfleet.jobs.data.shards import open_store

    data = spec.data
    field = "data.tokens" if data.tokens else "data.text" if data.text else "data.corpus"
    try:
        if data.tokens:
            manifest = checks.load_checked(open_store(data.tokens, data.endpoint_url))
            checks.check_vocabulary(manifest, data.tokens, vocab_size)
            tokens = manifest.tokens
        elif data.text:
            tokens = _check_text(data, vocab_size)
        else:
            from rayfleet.jobs.data.builtin import corpus_bytes

            tokens = len(corpus_bytes(data.corpus))
        validation = data.validation
        if validation is not None and validation.fraction is not None:
            train, held = order.held_out(tokens, validation.fraction)
            checks.check_length(train, data.seq_len, data.tokens or data.text or data.corpus, "training part")
            field = "data.validation.fraction"
            checks.check_length(held, data.seq_len, data.tokens or data.text or data.corpus,
                                f"held-out {validation.fraction:g} fraction")
        else:
            checks.check_length(tokens, data.seq_len, data.tokens or data.text or data.corpus)
        if validation is not None and validation.tokens:
            field = "data.validation.tokens"
            manifest = checks.load_checked(open_store(validation.tokens, data.endpoint_url))
            checks.check_vocabulary(manifest, validation.tokens, vocab_size)
            checks.check_length(manifest.tokens, data.seq_len, validation.tokens)
    except checks.CorpusError as error:
        raise BadInput(f"{path}: {field}: {error}") from None


def _check_text(data: DataSection, vocab_size: int) -> int:
    """Text inputs exist and the tokenizer fits the model; the corpus's size in bytes (an upper
    bound on its tokens: every tokenizer here emits at most one token per byte)."""
    import os

    from rayfleet.jobs.data.checks import CorpusError
    from rayfleet.jobs.data.text import expand
    from rayfleet.jobs.data.tokenizer import load_tokenizer

    files = expand([data.text or ""])
    if not files or not all(os.path.isfile(f) for f in files):
        raise CorpusError(f"{data.text}: no such file (or no file matches); name text files, a folder or a glob")
    try:
        tokenizer = load_tokenizer(data.tokenizer)
    except Exception as error:
        raise CorpusError(f"{data.tokenizer}: not a tokenizer.json ({error}); `rayfleet data prepare "
                          f"--train-tokenizer VOCAB` writes one") from None
    if tokenizer.vocab_size > vocab_size:
        raise CorpusError(f"{data.tokenizer}: vocabulary of {tokenizer.vocab_size} is larger than the model's "
                          f"vocab_size {vocab_size}; set model.overrides.vocab_size: {tokenizer.vocab_size}")
    size = sum(os.path.getsize(f) for f in files)
    if size == 0:
        raise CorpusError(f"{data.text}: every file is empty; name files with text")
    return size


def workers_per_node(spec: JobSpec, fleet: FleetSpec) -> int:
    """How many of this job's workers one node of its pool can hold."""
    pool = fleet.pool(spec.pool)
    fits = [math.floor(pool.cpus_per_node / spec.resources.cpus + 1e-9)]
    gpus = gpus_per_worker(spec, fleet)
    if gpus:
        fits.append(math.floor(pool.gpus_per_node / gpus + 1e-9))
    return max(0, min(fits))


def gpus_per_worker(spec: JobSpec, fleet: FleetSpec) -> float:
    if spec.resources.gpus is not None:
        return spec.resources.gpus
    return 1.0 if fleet.pool(spec.pool).gpus_per_node else 0.0


def check_against_fleet(spec: JobSpec, fleet: FleetSpec, path: str | Path) -> None:
    """The pool exists and can ever hold the workers (at max_nodes); BadInput otherwise."""
    if spec.pool not in fleet.pool_names:
        raise BadInput(f"{path}: pool: got {spec.pool!r}: fleet {fleet.name} has pools "
                       f"{', '.join(fleet.pool_names)}; name one of them")
    pool = fleet.pool(spec.pool)
    gpus = gpus_per_worker(spec, fleet)
    if gpus > pool.gpus_per_node:
        raise BadInput(f"{path}: resources.gpus: got {gpus:g}: a {pool.name} node has {pool.gpus_per_node} GPUs; "
                       f"ask for at most {pool.gpus_per_node}")
    if spec.resources.cpus > pool.cpus_per_node:
        raise BadInput(f"{path}: resources.cpus: got {spec.resources.cpus:g}: a {pool.name} node has "
                       f"{pool.cpus_per_node:g} CPUs; ask for at most {pool.cpus_per_node:g}")
    per_node = workers_per_node(spec, fleet)
    _, most = spec.worker_range
    if per_node * pool.max_nodes < most:
        raise BadInput(f"{path}: workers: got {most}: pool {pool.name} holds at most {per_node * pool.max_nodes} "
                       f"({per_node} per node x max_nodes {pool.max_nodes}); ask for fewer workers or raise "
                       f"the pool's max_nodes in the fleet spec")


def job_json_schema() -> dict[str, Any]:
    return JobSpec.model_json_schema()
