"""Measurement: a batch's outputs normalised and compared, folded into the hourly aggregates."""
