"""One request schema per model, with the contract's defaults, ranges and enums."""
