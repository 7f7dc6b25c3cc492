"""The search: study storage, Ray Tune execution, screening and promotion, warm starts, the front table."""
