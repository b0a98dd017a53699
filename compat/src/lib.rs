//! Nothing here: the tests under `tests/` start a node and read it with Nym's own types.
