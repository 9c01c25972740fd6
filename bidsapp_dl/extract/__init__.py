"""Participant level: loading, preprocessing and sample extraction of single images."""
