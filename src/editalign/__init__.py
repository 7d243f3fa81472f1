"""editalign: align language models from minimal edits."""

from editalign.data.align import IGNORE, Alignment, Label, align

__all__ = ["IGNORE", "Alignment", "Label", "align"]
__version__ = "0.1.0"
