"""enroll: a new site joins with a one-time token, its key never leaves it (docs/enrollment.md)."""
