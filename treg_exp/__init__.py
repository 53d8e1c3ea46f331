"""treg-exp: imaging inverse problems with (latent) diffusion priors, centred on TReg."""

__version__ = "0.1.0"
