"""Data: photo checks, captions, latent caches."""
