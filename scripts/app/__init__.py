"""The interactive app (configs/app.json): a Gradio page over the bundle's sampler, editor and writers."""
