"""Built-in environment families: classic control (fast numpy simulators) and any Gymnasium id."""
