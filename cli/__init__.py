"""Command-line interface: thin click commands over the bulkmail library."""
