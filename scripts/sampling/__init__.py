"""Text-to-image sampling: the jobs of a run, the guided sampler, and the writer of images and manifest."""
