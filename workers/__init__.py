"""Ready-to-serve worker definitions: ``wkr-serving-start workers.linear.Worker``."""
