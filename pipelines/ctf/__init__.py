"""CTF estimation: the CTF model, power spectra, the defocus and astigmatism search and fit, fit quality, and the RELION CtfFind file layer."""
