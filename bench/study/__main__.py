"""`python -m bench.study STUDY.yaml [--scale ...]`: see `bench.study`."""

import sys

from bench.study.cli import main

sys.exit(main())
