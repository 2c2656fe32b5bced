"""What operators see of jobstream: Prometheus metrics (``metrics``), shared by every service."""
