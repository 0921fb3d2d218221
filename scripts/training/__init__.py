"""Training both stages: the autoencoder and diffusion steps, resumable checkpoints, the latent scale factor."""
