"""The weights layer: the catalogue of repositories and files, download, SHA-256 integrity and
start-up checks (the synthetic writer, `python -m fastfit_engine.synthetic`, belongs here too).
It may import the model layer (the writer builds a random UNet), never the request or runtime."""
