"""PoseCrafter: one-shot personalisation, key-frame selection and insertion, latent affine editing."""
