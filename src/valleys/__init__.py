"""valleys: the training dynamics of neural networks."""

from valleys._version import __version__ as __version__
