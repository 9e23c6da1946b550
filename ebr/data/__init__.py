"""Built-in data: the seeded synthetic corpus that is ebr's default demo and test data."""
