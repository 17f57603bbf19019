"""User simulator (preferences + MNL click model) and the logging policy."""
