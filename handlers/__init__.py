"""The domain: which events exist, what they carry, who receives them, what clients may view."""
