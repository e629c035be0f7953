"""imgtool: a local disk-image gallery (Azure Compute Gallery's model on one machine)."""

__version__ = "0.1.0"
