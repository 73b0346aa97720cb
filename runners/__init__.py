"""Model runners: one BentoML service per pipeline family. Heavy imports happen inside them."""
