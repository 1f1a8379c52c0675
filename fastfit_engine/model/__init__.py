"""The model layer: the cacheable UNet, its attention backends, group norm, reference-pass CUDA
graphs, checkpoint loading, compile cache and `FastFitPipeline`. It knows nothing of requests,
caches across requests or the service; it imports only `fastfit_engine.errors` and
`fastfit_engine.settings` from this package."""
