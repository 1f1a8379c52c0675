"""The try-on HTTP service: the Flask app (`app.create_app`) and its parts, a module each.

`config` reads the environment (the command line uses it too), `admission` lets one request at a
time onto the GPU behind a bounded queue, `metrics` counts for Prometheus, `multipart` turns the
form into schema values and `responses` shapes every error as JSON. Importing this package loads
neither Flask nor any model.
"""
