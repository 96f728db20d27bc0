"""Training: one loop (`trainer`), losses, configs, and task wiring (`segmentation`)."""
