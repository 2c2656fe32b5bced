"""The notifier: delivers jobs' events to their webhooks, signed per Standard Webhooks, at least once."""
