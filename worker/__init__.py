"""Celery workers: turn queued envelopes into CRM rows, exactly once."""
