"""The private descriptor pool the generated stubs register in (see protocol/generate_grpc.py)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
