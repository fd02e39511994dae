"""Serving: `rcr-deploy serve` (a Ray Serve application, the optional `serve` extra), the
HTTP client behind `rcr-deploy infer --server`, and `rcr-deploy infer DIR --ray` (`batch`: a
folder on Ray workers). See docs/serving.md.

`protocol` and `client` need no Ray; `app` and `batch` import it, `cluster` starts it.
"""
