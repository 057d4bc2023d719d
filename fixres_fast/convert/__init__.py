"""Converters: source layouts (imagenet, inat, herbarium, folder) -> records (.beton, RecordIO)."""
from .core import FORMATS, LAYOUTS, ConvertConfig, convert
from .verify import verify

__all__ = ["ConvertConfig", "convert", "verify", "FORMATS", "LAYOUTS"]
