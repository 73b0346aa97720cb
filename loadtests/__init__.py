"""Load tests: Locust users for every model (locustfile.py), scenarios and thresholds per
profile, and the release gate that runs them (run.py: `depthid loadtest`, `make loadtest`)."""
