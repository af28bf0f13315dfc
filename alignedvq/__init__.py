"""Generated protobuf and gRPC stubs, at the import path that mirrors protos/alignedvq/."""
