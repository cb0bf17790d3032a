"""The lowest layer: typed configuration, the work-folder layout, process set-up."""
