"""``leanlm serve``: an OpenAI-compatible endpoint that follows an evolve run and hot-swaps its generations.

Layers, each in its own module:

- ``protocol``  the wire schemas (pydantic), the OpenAI error shape
- ``app``       FastAPI routes: validate, enqueue, stream; nothing here touches a model
- ``scheduler`` one thread that owns the models: iteration-level batching over a step-level backend
- ``sampling``  per-row temperature / top-p sampling as plain functions over tensors
- ``backends``  ``torch`` (any ``leanlm.load`` spec) and ``llama_cpp`` (a GGUF through llama-cpp-python)
- ``versions``  immutable versions, the ledger, follow / swap / canary / promote / rollback
- ``server``    ``serve(cfg)`` and a thread runner for tests and benchmarks

Imported by no one but the CLI (and ``leanlm evolve --serve``, through the CLI).
"""
