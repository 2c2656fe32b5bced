"""The base of every error jobstream raises on purpose.

Each package keeps its own small, specific errors next to the code that raises them; they all
derive from ``JobstreamError`` (and from a builtin where callers already catch that one), so a
caller can tell jobstream's refusals from bugs and third-party failures. Domain errors carry no
HTTP status: the routes map them to problem details.
"""

from __future__ import annotations


class JobstreamError(Exception):
    """Base class of jobstream's own errors."""
