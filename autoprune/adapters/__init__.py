"""All contact with third-party model libraries lives here: one adapter per library."""
