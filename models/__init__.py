"""timm backbones for CIFAR, norm swapping, regularizers and the LightningModule."""
