"""Who may call and how much: API keys, admission, credits and per-key limits."""
