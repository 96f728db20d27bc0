"""Synthetic data and dataset handling."""
