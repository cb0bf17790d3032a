"""The loop's stages as plain functions, the one-pass run and its report."""
