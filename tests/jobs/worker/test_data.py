"""Training data: a real corpus, deterministic per step, the same global batch at any world size."""
from __future__ import annotations

import torch

from rayfleet.jobs.worker.data import StepBatches, corpus_tokens


def test_corpus_is_the_python_reference_as_bytes() -> None:
    tokens = corpus_tokens("python-docs")
    assert tokens.numel() > 400_000 and int(tokens.max()) < 256
    text = bytes(tokens[:200_000].to(torch.uint8).tolist()).decode("utf-8", errors="replace")
    assert "assert" in text and "expression" in text


def test_batches_are_a_pure_function_of_the_step() -> None:
    batches = StepBatches(corpus_tokens(), seq_len=32, global_batch=8, seed=7)
    again = StepBatches(corpus_tokens(), seq_len=32, global_batch=8, seed=7)
    for step in (0, 5, 1000):
        assert torch.equal(batches.batch(step)[0], again.batch(step)[0])
    assert not torch.equal(batches.batch(0)[0], batches.batch(1)[0])
    assert not torch.equal(batches.batch(0)[0], StepBatches(corpus_tokens(), 32, 8, seed=8).batch(0)[0])


def test_rank_slices_compose_the_same_global_batch_at_any_world_size() -> None:
    batches = StepBatches(corpus_tokens(), seq_len=16, global_batch=8, seed=0)
    whole_x, whole_y = batches.batch(3)
    for world in (2, 4, 8):
        parts = [batches.batch(3, rank, world) for rank in range(world)]
        assert torch.equal(torch.cat([x for x, _ in parts]), whole_x)
        assert torch.equal(torch.cat([y for _, y in parts]), whole_y)
    assert torch.equal(whole_x[:, 1:], whole_y[:, :-1])  # targets are inputs shifted by one token


def test_window_batches_read_the_same_tokens_at_any_world_size_and_after_resume(tmp_path) -> None:
    import numpy as np

    from rayfleet.jobs.data.shards import TokenShards
    from rayfleet.jobs.worker.data import WindowBatches
    from tests.support.corpus import write_corpus

    tokens = write_corpus(tmp_path, sizes=[500, 300, 225], vocab=1000)
    source = TokenShards.open(str(tmp_path))
    batches = WindowBatches(source, seq_len=16, global_batch=8, seed=5)
    windows = (1025 - 1) // 16
    seen = []
    for step in range(2 * windows // 8):
        x, y = batches.batch(step)
        assert torch.equal(x[:, 1:], y[:, :-1])
        for world in (2, 4):
            parts = [batches.batch(step, rank, world) for rank in range(world)]
            assert torch.equal(torch.cat([p[0] for p in parts]), x)
        resumed = WindowBatches(TokenShards.open(str(tmp_path)), seq_len=16, global_batch=8, seed=5)
        assert torch.equal(resumed.batch(step, 1, 2)[1], y[4:])
        seen += [tuple(row.tolist()) for row in x]
    every = [tuple(tokens[i * 16:i * 16 + 16].tolist()) for i in range(windows)]
    assert sorted(seen[:windows]) == sorted(every)  # epoch 0: every window once
    assert sorted(seen[windows:2 * windows]) == sorted(every)
    assert batches.position(windows // 8 + 1) == {"epoch": (windows // 8 + 1) * 8 // windows,
                                                   "position": (windows // 8 + 1) * 8 % windows,
                                                   "samples": (windows // 8 + 1) * 8}


def test_the_blocks_order_reads_the_same_tokens_at_any_world_size_and_after_resume(tmp_path) -> None:
    import numpy as np

    from rayfleet.jobs.data.shards import TokenShards
    from rayfleet.jobs.worker.data import WindowBatches
    from tests.support.corpus import write_corpus

    tokens = write_corpus(tmp_path, sizes=[500, 300, 1225], vocab=1000)
    windows = (len(tokens) - 1) // 16

    def blocks() -> WindowBatches:  # blocks of 7 windows, groups of 3: a short last block
        return WindowBatches(TokenShards.open(str(tmp_path)), 16, 8, 5, "blocks", block_windows=7, span=3)

    batches, seen = blocks(), []
    for step in range(2 * windows // 8):
        x, y = batches.batch(step)
        assert torch.equal(x[:, 1:], y[:, :-1])
        order = batches.order.windows_at(step)
        assert torch.equal(x, torch.as_tensor(np.stack([tokens[w * 16:w * 16 + 16] for w in order])))
        for world in (2, 4):
            assert torch.equal(torch.cat([blocks().batch(step, rank, world)[0] for rank in range(world)]), x)
        seen += [tuple(row.tolist()) for row in x]
    every = [tuple(tokens[i * 16:i * 16 + 16].tolist()) for i in range(windows)]
    assert sorted(seen[:windows]) == sorted(every)  # epoch 0: every window once


def test_a_held_out_fraction_validates_on_the_tail_the_training_windows_never_read(tmp_path) -> None:
    from rayfleet.jobs.client.spec import DataSection
    from rayfleet.jobs.worker.data import build_data
    from tests.support.corpus import write_corpus

    tokens = write_corpus(tmp_path, sizes=[1000], vocab=300)
    data = build_data(DataSection.model_validate({"tokens": str(tmp_path), "seq_len": 8, "global_batch": 4,
                                                  "validation": {"fraction": 0.2, "eval_batches": 2}}), seed=0)
    assert data.validation is not None
    train = torch.cat([data.train.batch(s)[0] for s in range(30)])
    assert int(train.numel()) and len(data.train.source) == 800  # type: ignore[attr-defined]
    x, y = data.validation.batch(0)
    assert torch.equal(x[0], torch.as_tensor(tokens[800:808]))
    assert torch.equal(data.validation.batch(1, 1, 2)[0], data.validation.batch(1)[0][2:])


def test_the_built_in_corpus_keeps_its_batches() -> None:
    from rayfleet.jobs.client.spec import DataSection
    from rayfleet.jobs.worker.data import build_data

    data = build_data(DataSection(seq_len=32, global_batch=8), seed=7)
    assert data.validation is None
    assert torch.equal(data.train.batch(3)[0], StepBatches(corpus_tokens(), 32, 8, seed=7).batch(3)[0])


def test_text_is_tokenised_at_start_up_with_a_tokenizer_file(tmp_path) -> None:
    from rayfleet.jobs.client.spec import DataSection
    from rayfleet.jobs.data.tokenizer import load_tokenizer, train_bpe
    from rayfleet.jobs.worker.data import build_data

    text = tmp_path / "a.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 200)
    path = train_bpe([text.read_text()], 300, tmp_path / "tokenizer.json")
    data = build_data(DataSection(text=str(text), tokenizer=str(path), seq_len=8, global_batch=2), seed=0)
    x, _ = data.train.batch(0)
    assert int(x.max()) < 300 and x.shape == (2, 8)
    decoded = load_tokenizer(str(path)).model.decode(data.train.source.read(0, 20).tolist())  # type: ignore
    assert decoded.startswith("the quick brown fox")
