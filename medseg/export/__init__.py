"""Outputs people look at: previews, overlays, reports."""
