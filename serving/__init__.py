"""shadowtee serving."""
