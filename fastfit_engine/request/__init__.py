"""The request layer: the field schema (`schema.py`, the single source of request fields), image
decoding policy and output encoding. It may import the model and weights layers, never the
runtime or the service."""
