//! The int8 weights format, serialized with postcard: the one place it is defined.
