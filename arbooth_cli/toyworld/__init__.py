"""The toy world: a procedural, seeded generator of captioned images (shapes, colours, positions,
backgrounds) and pixel-level detectors that read those attributes back from any image."""
