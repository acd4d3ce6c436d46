"""Batch image-asset pipeline: Parquet manifests in; filtered, C2PA-signed images and a results table out."""

__version__ = "0.1.0"
