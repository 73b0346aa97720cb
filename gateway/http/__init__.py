"""HTTP plumbing of the API: the error shape, middleware, body limits, OpenAPI and its examples."""
