"""Inference: classical lung mask, volume segmentation, radiograph classification and Grad-CAM explanations."""
