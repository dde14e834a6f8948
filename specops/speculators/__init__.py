"""Speculators: context ids in, proposed ids out (plus draft probabilities for sampling)."""
