"""The application layer: what has a life over time (the model slot), between server/ and domain/."""
