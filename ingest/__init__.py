"""The HTTP edge: verify, claim, enqueue, answer. Webhook routes never touch PostgreSQL."""
