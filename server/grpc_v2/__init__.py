"""The Open Inference Protocol v2 over gRPC (`--grpc-port`): the protocol's .proto and its compiled
descriptor set, the message classes built from it, the service's calls and the server that runs them."""
