"""`rayfleet data prepare INPUT... -o DIR`: text to token shards and a manifest (jobs/data/prepare.py)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rayfleet.cli.app import app
from rayfleet.cli.output import console
from rayfleet.errors import BadInput

data = typer.Typer(help="Prepare training data: text to token shards.", no_args_is_help=True)
app.add_typer(data, name="data")


@data.command()
def prepare(
    inputs: List[str] = typer.Argument(..., help="text files, folders or globs: plain text (a file is a document), "
                                                 "JSONL or Parquet (a `text` field per document)"),
    out: Path = typer.Option(..., "-o", "--out", help="folder for the shards and manifest.json (a job's data.tokens)"),
    train_tokenizer: Optional[int] = typer.Option(
        None, "--train-tokenizer", metavar="VOCAB", help="train a byte-level BPE of VOCAB tokens on the input first "
                                                         "(written to OUT/tokenizer.json)"),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="an existing tokenizer.json (default: bytes, "
                                                                       "vocab 256)"),
    workers: Optional[int] = typer.Option(None, "--workers", help="local processes (default: one per CPU)"),
    chunk_mb: int = typer.Option(64, "--chunk-mb", help="text/JSONL files are cut into units of about this size; "
                                                        "each unit is one shard"),
) -> None:
    """Tokenise text into shards. Run it again after an interruption: finished shards are kept."""
    from rayfleet.jobs.data.prepare import prepare as run

    if train_tokenizer is not None and tokenizer is not None:
        raise BadInput("data prepare: --train-tokenizer and --tokenizer are exclusive; train one or name one")
    if train_tokenizer is not None and not 257 <= train_tokenizer <= 1 << 20:
        raise BadInput(f"data prepare: --train-tokenizer: got {train_tokenizer}; a byte-level BPE needs more than "
                       "its 256 byte symbols (e.g. 8192)")
    if tokenizer is not None and not tokenizer.is_file():
        raise BadInput(f"data prepare: --tokenizer: {tokenizer}: no such file; name a tokenizer.json")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("shards", total=None, detail="training tokenizer" if train_tokenizer else "")

        def on_progress(finished: int, total: int, tokens: int) -> None:
            bar.update(task, completed=finished, total=total, detail=f"{tokens:,} tokens")

        try:
            manifest = run(inputs, out, tokenizer=str(tokenizer) if tokenizer else None, train_vocab=train_tokenizer,
                           workers=workers, chunk_bytes=chunk_mb << 20, on_progress=on_progress)
        except FileNotFoundError as error:
            raise BadInput(f"data prepare: {error.args[0] if error.args else error}: no such input; name text "
                           "files, folders or globs") from None
        except (ValueError, UnicodeError) as error:
            raise BadInput(f"data prepare: {error}") from None
    console.print(f"{out}: {manifest.tokens:,} tokens in {len(manifest.shards)} shard(s), {manifest.documents:,} "
                  f"documents, vocab {manifest.vocab_size} ({manifest.tokenizer}); train on it with "
                  f"`data: {{tokens: {out.resolve()}}}` and model.overrides.vocab_size >= {manifest.vocab_size}")
