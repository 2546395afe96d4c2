"""Operator commands: crm-run (and, as they come, crm-dlq, crm-smoke)."""
