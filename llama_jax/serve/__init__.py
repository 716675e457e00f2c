"""An OpenAI-compatible HTTP server with continuous batching (``python -m llama_jax.serve``).

* `slots.py`: `SlotEngine`, decode slots over one KV cache on the mesh (compiled prefill
  chunks, one decode step, slot copy).
* `sampling.py`: per-slot temperature / top-p sampling.
* `scheduler.py`: `Scheduler`, the thread that owns the device and admits, steps and
  frees requests.
* `text.py`: stop strings and stream-safe text deltas.
* `schemas.py`, `sse.py`, `api_errors.py`, `app.py`: the FastAPI side (`create_app`).
* `chat.py`: chat messages to prompt tokens with `llama_jax.chat.templates`.
* `__main__.py`: the command line.

FastAPI and uvicorn are the ``[serve]`` extra; import `llama_jax.serve.app` only where
they are installed.
"""
