"""Textual browser for fusetrace traces (see issue: browse)."""
