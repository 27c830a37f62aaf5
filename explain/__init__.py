"""govgate explain package."""
