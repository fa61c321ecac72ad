"""Any Gymnasium id as a single-task family, and the vector env other families build on."""
