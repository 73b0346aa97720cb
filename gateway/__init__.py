"""The HTTP gateway: the public API in front of the model runners (never imports torch)."""
