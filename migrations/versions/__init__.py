"""Migration scripts, oldest first (revision ids ``0001_initial``, ``0002_...``)."""
