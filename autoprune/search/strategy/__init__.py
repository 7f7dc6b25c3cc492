"""What a search runs and when: the time plan, the hand recipe's models, the sensitivity scan and its allocations,
screening and promotion, warm starts, targets. Imports execution and storage."""
