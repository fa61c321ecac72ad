"""Built-in replay strategies."""
