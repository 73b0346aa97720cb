"""Who may call and how much: API keys, admission, credits and per-key limits."""

# The one tenant when keys are off; reserved, never a key's name. Here, not in api_keys.py, so
# the job store can name a job's owner without importing the keys machinery.
ANONYMOUS = "anonymous"
