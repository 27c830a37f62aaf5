"""govgate gateway package."""
