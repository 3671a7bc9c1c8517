"""The method's maths and records: pure functions and dataclasses, no Megatron, no process groups,
no HTTP clients, no model libraries (tests/core/test_layering.py reads the imports to hold that).
Everything here is tested in milliseconds."""
