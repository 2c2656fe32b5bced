"""The operations console: a browser UI at ``/ui``, served by the API process.

Static pages and ES modules talking to the public HTTP API only (``/v1/...``), so the console can do
nothing a client with the same API key cannot. Front-end libraries come from npm (``make console``).
"""
