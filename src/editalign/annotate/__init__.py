"""A local web tool for human minimal edits (``editalign annotate``); see docs/annotate.md."""
