"""Datasets, augmentation and fake prior masks for training and evaluation, and the one sample
photograph the package ships."""

from pathlib import Path

#: NASA's public-domain portrait of Eileen Collins (assets/ATTRIBUTION.md): the demo's and the
#: benchmarks' picture of a person; no dataset image is shipped.
SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "assets" / "astronaut-eileen-collins.jpg"
