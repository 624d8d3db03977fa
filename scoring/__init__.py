"""The metric, the constant-shape yardstick and the scoring of prediction files."""
