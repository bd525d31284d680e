"""shadowtee reports."""
