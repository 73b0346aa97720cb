"""What the Gateway and the runners exchange: job and result types, and the split of a job into
one-sample jobs and back. Both sides import it, so it never imports torch."""
