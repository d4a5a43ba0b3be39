"""Train a timm backbone on CIFAR with batch regularizers: fit, select on validation, test once.

    python train.py --config configs/cifar10_resnet18.yaml
    python train.py --config configs/cpu_smoke.yaml --model.mixup.alpha 0.2
    python train.py --config configs/cifar10_resnet18.yaml --print_config
"""

import sys

from models.run.cli import main

if __name__ == "__main__":
    sys.exit(main())
