"""Model-specific helpers: files, input shapes and output decoding (one module per model family).

Example:
    >>> from streamflow.models import centerface
    >>> centerface.OUTPUT_NAMES
    ('537', '538', '539', '540')
"""

from streamflow.models import centerface

__all__ = ["centerface"]
