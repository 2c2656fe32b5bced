"""Telemetry shared by every role: metrics, traces and log format."""
