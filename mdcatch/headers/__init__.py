"""Movie headers (MRC, TIFF, EER): format detection, frame count, size and completeness, read before any frame is."""
