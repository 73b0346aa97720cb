"""v2 asynchronous jobs: the routes, the job stores (in-process and Redis) and the worker."""
