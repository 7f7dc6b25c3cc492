"""Where a search's results live: the study storage (SQLite, PostgreSQL), the journal of results it refused, the
front table in SQL and the artifact store. Imports nothing of execution or strategy."""
