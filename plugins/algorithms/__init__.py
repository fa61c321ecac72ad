"""Built-in algorithms: actor-critic learners that mix parameters with their neighbours."""
