"""Load tests: Locust users for every model (locustfile.py), scenarios and thresholds per
profile, and the release gate that runs them (`python -m loadtests.run`, `make loadtest`)."""
