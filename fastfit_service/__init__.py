"""The try-on HTTP service: the Flask app (`app.create_app`) and its parts, a module each.

`config` names the settings (`fastfit_engine.settings`) as the app's keys, `routes` is the
blueprint and `core` the Flask-free handling of a request, `admission` lets one request at a
time onto the GPU behind a bounded queue, `metrics` counts for Prometheus, `multipart` turns the
form into schema values and `responses` shapes every error as JSON. Importing this package loads
neither Flask nor any model.
"""
