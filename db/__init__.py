"""PostgreSQL access: tables on one MetaData, the engine factory and the query functions."""
