"""``llmlocal serve``: an OpenAI-compatible HTTP API over the local models.

- ``app``: the HTTP side (Starlette routes on uvicorn; the only module that imports them).
- ``pool``: which models are resident, loaded lazily and evicted least recently used.
- ``engine_thread``: one thread per model driving its parallel engine, so requests batch together.
- ``openai_format``: OpenAI's request and response shapes as pure functions (no HTTP, no model).
"""
