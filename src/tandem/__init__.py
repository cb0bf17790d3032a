"""tandem: an MLOps workflow for multimodal search and item-to-item recommendation."""

__version__ = "0.1.0"  # the one version source (pyproject reads it through hatch)
