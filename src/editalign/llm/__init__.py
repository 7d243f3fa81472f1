"""Talking to an LLM behind an OpenAI-compatible endpoint: the HTTP client (deadline, size cap,
retries, key redaction) and its SQLite request cache. Below ``revise`` (the reviser) and
``eval`` (the API judge), which both send through it."""
