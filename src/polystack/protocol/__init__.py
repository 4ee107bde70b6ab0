"""The Open Inference Protocol v2 on the wire: request/response types, the HTTP body codec (JSON and
binary tensors), the gRPC codec and the generated gRPC stubs. It never imports the engine."""
