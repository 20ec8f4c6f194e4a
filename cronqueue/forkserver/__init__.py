"""The opt-in fork server: Python task scripts forked from a warm interpreter."""
