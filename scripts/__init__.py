"""Python pieces of the cxr-ldm bundle that its configs cannot express (imported as ``scripts.*``)."""

from scripts.common.errors import install_excepthook

# Configs import this package first: from then on an error raised inside a config expression ends the
# output with the bundle's own one-line message instead of MONAI's wrapper text.
install_excepthook()
