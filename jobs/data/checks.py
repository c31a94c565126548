"""What a job's corpus must satisfy before it is submitted, checked against the corpus itself:
its manifest reads, its shards exist with the sizes the manifest gives and can be read, its
tokens fit the model's vocabulary and it holds at least one window of seq_len + 1 tokens. Each
problem is one CorpusError whose message names the file and the fix; the job client adds the
job file and the field."""
from __future__ import annotations

from rayfleet.jobs.data.manifest import FILE, Manifest
from rayfleet.jobs.data.shards import Store, read_manifest


class CorpusError(ValueError):
    pass


PREPARE = "`rayfleet data prepare` writes shards and their manifest"


def load_checked(store: Store) -> Manifest:
    """The corpus's manifest, checked against its shards (sizes, readable, none empty)."""
    where = f"{store.where}/{FILE}"
    try:
        manifest = read_manifest(store)
    except FileNotFoundError:
        raise CorpusError(f"{where}: no manifest; {PREPARE}") from None
    except ValueError as error:
        raise CorpusError(f"{where}: not a token manifest ({error}); {PREPARE} again") from None
    except Exception as error:  # S3: no such bucket or key, no credentials, endpoint down
        raise CorpusError(f"{where}: cannot be read ({type(error).__name__}: {error}); check the path, "
                          f"data.endpoint_url and the credentials") from None
    if not manifest.shards:
        raise CorpusError(f"{where}: lists no shards; {PREPARE} from at least one non-empty file")
    for shard in manifest.shards:
        path = f"{store.where}/{shard.name}"
        size = store.size(shard.name)
        if size is None:
            raise CorpusError(f"{path}: listed in {FILE} but missing or unreadable; copy it back or {PREPARE} again")
        if shard.tokens == 0 or size == 0:
            raise CorpusError(f"{path}: empty shard; drop it from {FILE} or {PREPARE} again")
        if size != shard.nbytes(manifest.dtype):
            raise CorpusError(f"{path}: {size} bytes, but {FILE} says {shard.tokens} {manifest.dtype} tokens "
                              f"({shard.nbytes(manifest.dtype)} bytes): the manifest does not match its shards; "
                              f"{PREPARE} again")
        try:
            store.read_range(shard.name, 0, min(size, 64))
        except Exception as error:
            raise CorpusError(f"{path}: cannot be read ({type(error).__name__}: {error}); check its permissions") \
                from None
    return manifest


def check_vocabulary(manifest: Manifest, where: str, model_vocab: int) -> None:
    """Every token id the corpus can hold must index the model's embedding."""
    if manifest.vocab_size > model_vocab:
        raise CorpusError(f"{where}/{FILE}: vocab_size {manifest.vocab_size} (tokenizer {manifest.tokenizer}) is "
                          f"larger than the model's vocab_size {model_vocab}: token ids >= {model_vocab} would index "
                          f"past the embedding; set model.overrides.vocab_size: {manifest.vocab_size}")
    if manifest.max_token is not None and manifest.max_token >= model_vocab:
        raise CorpusError(f"{where}/{FILE}: holds token id {manifest.max_token}, not below the model's vocab_size "
                          f"{model_vocab}; set model.overrides.vocab_size: {manifest.max_token + 1} or more")


def check_length(tokens: int, seq_len: int, where: str, part: str = "corpus") -> None:
    if tokens < seq_len + 1:
        raise CorpusError(f"{where}: the {part} holds {tokens} tokens, fewer than one window of seq_len + 1 = "
                          f"{seq_len + 1}; lower data.seq_len or add text")
