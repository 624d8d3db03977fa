"""The bottom layer: the coordinate codec, paths, the atomic writer, error types, pictures."""
