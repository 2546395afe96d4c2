"""`python -m common.senders`: the README's two tables, where each sender's URL and secret go
and what each event does, from the registry."""

from common.senders import events_table, setup_table

print(setup_table(), events_table(), sep="\n\n")
