"""How trials run: one Ray Tune run per search (the session), the study's searcher and the one generic trainable,
and Ray's lifetime. Imports storage, never strategy."""
