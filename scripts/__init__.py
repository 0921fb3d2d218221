"""Python pieces of the cxr-ldm bundle that its configs cannot express (imported as ``scripts.*``)."""
