"""`python -m common.senders`: the README's table of events, from the registry."""

from common.senders import events_table

print(events_table())
