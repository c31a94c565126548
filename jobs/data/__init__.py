"""Training data on disk and in object storage: token shards and their manifest (manifest.py),
reading them without loading them whole (shards.py), the order windows are visited in (order.py,
pure), turning text into shards (prepare.py) and tokenizers (tokenizer.py).

The job client checks a corpus here before submitting; the worker loop (jobs/worker/data.py)
builds its batches from it.
"""
