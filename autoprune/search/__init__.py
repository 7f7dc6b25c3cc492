"""The search, in three layers below ``run`` (the phases of ``autoprune search``) and ``inputs`` (its checks):
``strategy`` (what runs and when) over ``execution`` (how it runs: Ray Tune) over ``storage`` (where results
live); import-linter keeps the direction."""
