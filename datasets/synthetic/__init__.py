"""A simulated world that writes the BatVision V1/V2 on-disk formats (see ``writer``)."""
