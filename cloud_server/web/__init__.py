"""``cloud-server --web-port``: the InferenceService for browsers (gRPC-Web over HTTP/1.1) and
the browser edge's page (examples/web)."""
