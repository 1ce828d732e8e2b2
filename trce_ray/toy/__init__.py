"""The built-in toy world: a tiny text-to-image model and a classifier whose concepts we control."""
