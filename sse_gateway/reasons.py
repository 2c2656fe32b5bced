"""Why a stream ends or starts over: the ``reason`` of ``event: disconnect`` and ``event: reset`` frames.

String enums, so the frames carry exactly the words the README documents.
"""

from __future__ import annotations

from enum import StrEnum


class CloseReason(StrEnum):
    """Why a subscription closed; every reason but ``client_disconnected`` is told with ``event: disconnect``."""

    SLOW_CLIENT = "slow_client"  #: its queue overflowed (JOBSTREAM_SSE_QUEUE_SIZE); it resumes by id
    MAX_LIFETIME = "max_lifetime"  #: the stream outlived JOBSTREAM_SSE_MAX_STREAM_S
    SHUTDOWN = "shutdown"  #: the gateway is stopping
    CLIENT_DISCONNECTED = "client_disconnected"  #: the client went away: nobody to tell


class ResetReason(StrEnum):
    """Why the events since Last-Event-ID cannot all be sent (``event: reset``; live events follow)."""

    HISTORY_UNAVAILABLE = "history_unavailable"  #: a job's early events are no longer stored (retention)
    HISTORY_LAGGING = "history_lagging"  #: the sink is further behind than the gateway's recent window
    POSITION_EXPIRED = "position_expired"  #: Kafka or ClickHouse no longer hold the position (retention)
    UNKNOWN_POSITION = "unknown_position"  #: the position is past the topic's end
    TOO_FAR_BEHIND = "too_far_behind"  #: more than JOBSTREAM_SSE_RESUME_MAX_EVENTS events back
    KAFKA_UNAVAILABLE = "kafka_unavailable"  #: Kafka did not answer for the position's watermarks
