"""Fast batch augmentation and regularization for image classification (torch only)."""
