"""The wire format both halves speak (torch-free): request messages, bit packing, mode names,
request ids and the gRPC channel."""
