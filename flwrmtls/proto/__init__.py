"""Generated protobuf and gRPC code: `make proto` writes it, `make proto-check` fails when stale."""
