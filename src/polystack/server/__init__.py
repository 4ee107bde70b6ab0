"""Serving over the Open Inference Protocol v2: HTTP (``http``), gRPC (``grpc``), one data plane
(``dataplane``), one error table (``status``) and one composition root (``app``)."""
