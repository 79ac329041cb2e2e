"""The orchestrators: one echo set, the participant and group levels."""
