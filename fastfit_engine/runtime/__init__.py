"""The runtime layer: `FastFitEngine` (models, threads, streams and the GPU lock), the caches
across requests and the CPU time estimate. The top of the engine package; the service and the
command line sit above it."""
