"""Serving: `rcr-deploy serve` (a Ray Serve application, the optional `serve` extra) and the
HTTP client behind `rcr-deploy infer --server`. See docs/serving.md.

`protocol` and `client` need no Ray; `app` imports it.
"""
