"""Command line: the options definition and the entry point."""
