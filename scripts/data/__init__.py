"""Data: MIMIC-CXR (or own data) preparation, report sections, the synthetic data set, transforms, image sets."""
