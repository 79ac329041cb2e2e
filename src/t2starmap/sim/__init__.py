"""Synthetic phantoms with known truth, and the failure modes real data show."""
