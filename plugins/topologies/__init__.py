"""Built-in topologies: ring, fully-connected, random, adjacency, exponential, isolated, centralised."""
