"""Inference: classical lung mask, volume segmentation."""
