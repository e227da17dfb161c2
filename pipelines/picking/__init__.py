"""Particle picking: the blob (LoG/DoG) and template pickers, their filters, decoys and SNR scores, and coordinate files."""
